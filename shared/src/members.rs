//! Members style: which fields of a person each scope opens, the consent rule, and the
//! signed JSON envelope a Members-style webhook receives.

use crate::ids::ApplicationId;
use crate::ports::{Page, Person};
use crate::record::RecordId;
use crate::signing::SigningKey;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Every scope and the person fields it opens. `personID` and `lastChangedDate` are
/// always sent.
pub const SCOPE_FIELDS: &[(&str, &[&str])] = &[
    (
        "members.read_name",
        &["firstName", "middleName", "lastName", "displayName"],
    ),
    ("members.email", &["email"]),
    ("members.phone", &["cellPhone", "homePhone"]),
    ("members.address", &["currentAddress"]),
    ("members.read_birthdate", &["birthDate"]),
    ("members.read_gender", &["gender"]),
    ("members.read_active_status", &["activeStatus"]),
    ("members.read_church", &["churchID", "church"]),
];

/// The scopes `person` granted `application`, or `None` when it has no consent entry
/// for it (then nothing about the person is ever sent to that application).
pub fn consented_scopes(person: &Person, application: &ApplicationId) -> Option<Vec<String>> {
    let scopes = person
        .get("consents")?
        .get(application.as_str())?
        .as_array()?;
    Some(
        scopes
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
    )
}

/// The persons of a scanned page who consented to share with `application`. A scan pages
/// by the persons it examines (as DynamoDB's filtered Scan does), so the page keeps its
/// `next` however few consented.
pub fn consenting(
    scanned: Page<(RecordId, Person)>,
    application: &ApplicationId,
) -> Page<(RecordId, Person)> {
    scanned.retain(|(_, person)| consented_scopes(person, application).is_some())
}

/// Every (application, scopes) pair `person` consented to. A consent key that is not an
/// application id names no application (ids are checked when applications are made).
pub fn consents(person: &Person) -> Vec<(ApplicationId, Vec<String>)> {
    let Some(Value::Object(all)) = person.get("consents") else {
        return vec![];
    };
    all.keys()
        .filter_map(|key| ApplicationId::parse(key).ok())
        .filter_map(|app| consented_scopes(person, &app).map(|scopes| (app, scopes)))
        .collect()
}

/// The person as an application with `scopes` may see it.
pub fn scoped_person(id: &RecordId, person: &Person, scopes: &[String]) -> ScopedPerson {
    let mut scoped = Map::new();
    scoped.insert("personID".into(), id.as_str().into());
    scoped.insert(
        "lastChangedDate".into(),
        person
            .get("lastChangedDate")
            .cloned()
            .unwrap_or(Value::Null),
    );
    for (scope, fields) in SCOPE_FIELDS {
        if scopes.iter().any(|s| s == scope) {
            for field in *fields {
                if let Some(value) = person.get(*field) {
                    scoped.insert((*field).to_owned(), value.clone());
                }
            }
        }
    }
    ScopedPerson::from_map(&scoped)
}

/// A person as one application may see it ([`scoped_person`]), kept as the JSON object
/// it was written as when its job was made. A delivery copies these bytes into the
/// envelope's `data` as they are: read into a map and written out again for every
/// message, the person was the largest part of what a Members-style delivery cost over
/// an ORCID-style one (figure 2 in docs/benchmarks.md). Two are equal when they are the
/// same JSON object, however written (a queue message body escapes characters SQS
/// refuses, see [`crate::message::encode`], and the text read back keeps the escapes).
/// Written and read through `serde_json` only: every store keeps a job as JSON text.
#[derive(Clone)]
pub struct ScopedPerson(Box<RawValue>);

impl ScopedPerson {
    /// The person's JSON object, compact, keys in the order the map keeps them.
    pub fn from_map(person: &Map<String, Value>) -> Self {
        Self(serde_json::value::to_raw_value(person).expect("a JSON map always serializes"))
    }

    /// The JSON object text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The person read into a map (for views and checks; a delivery sends [`Self::json`]).
    pub fn to_map(&self) -> Map<String, Value> {
        // Valid JSON and an object, checked when it was read: this cannot fail.
        serde_json::from_str(self.json()).unwrap_or_default()
    }
}

impl From<Map<String, Value>> for ScopedPerson {
    fn from(person: Map<String, Value>) -> Self {
        Self::from_map(&person)
    }
}

impl PartialEq for ScopedPerson {
    fn eq(&self, other: &Self) -> bool {
        // The same text is the common case, and cheap; other texts are compared as JSON.
        self.json() == other.json() || self.to_map() == other.to_map()
    }
}

impl Eq for ScopedPerson {}

/// Names the fields only: a person's data is never in a debug line (a job, and so a
/// person, can be printed with `{:?}` by a log line or a failing assertion).
impl std::fmt::Debug for ScopedPerson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ScopedPerson")
            .field(&self.to_map().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Serialize for ScopedPerson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ScopedPerson {
    /// Any JSON object, its text kept as it is; anything else is refused.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        if raw.get().trim_start().starts_with('{') {
            Ok(Self(raw))
        } else {
            Err(serde::de::Error::custom("a person is a JSON object"))
        }
    }
}

/// A person with every field, for "Run Test" without a chosen person.
pub fn sample_person() -> Map<String, Value> {
    serde_json::json!({
        "personID": "sample-0000",
        "lastChangedDate": "2021-02-26T19:13:55.749Z",
        "firstName": "Ada",
        "middleName": "Augusta",
        "lastName": "Lovelace",
        "displayName": "Ada Lovelace",
        "email": "ada@example.org",
        "cellPhone": "+44 20 7946 0000",
        "homePhone": "+44 20 7946 0001",
        "currentAddress": {"street": "12 St James's Square", "postalCode": "SW1Y 4JH", "city": "London", "country": "GB"},
        "birthDate": "1815-12-10",
        "gender": "Female",
        "activeStatus": "Active",
        "churchID": 1,
        "church": {"id": 1, "name": "Sample congregation"}
    })
    .as_object()
    .cloned()
    .expect("an object")
}

/// The envelope body: `data` is base64 of the JSON array of `persons`, `attributes.hash`
/// the base64 HMAC-SHA256 of those exact bytes under the signing key (absent when the
/// application has set no signing key).
pub fn envelope(
    persons: &[ScopedPerson],
    signing_key: Option<&SigningKey>,
    message_id: &str,
    publish_time: &str,
    subscription: &str,
) -> Vec<u8> {
    // The array written from the persons' own JSON, in a buffer sized once.
    let mut data =
        Vec::with_capacity(2 + persons.iter().map(|p| p.json().len() + 1).sum::<usize>());
    data.push(b'[');
    for (i, person) in persons.iter().enumerate() {
        if i > 0 {
            data.push(b',');
        }
        data.extend_from_slice(person.json().as_bytes());
    }
    data.push(b']');
    // Written out in the order a `serde_json::Map` keeps keys (sorted), so the bytes are the
    // ones a `serde_json::Value` of the envelope gives. The base64 of the data and of the
    // hash go in as they are (their alphabet needs no JSON escape): serialized as strings,
    // the data was copied once more and scanned for escapes, byte by byte, in every message
    // (figure 2's profile, docs/benchmarks.md, fourth pass); the other strings are escaped.
    let encoded_len = base64::encoded_len(data.len(), true).unwrap_or(0);
    let mut bytes = Vec::with_capacity(encoded_len + 256);
    bytes.extend_from_slice(b"{\"message\":{\"attributes\":{");
    if let Some(key) = signing_key {
        bytes.extend_from_slice(b"\"hash\":\"");
        key.push_hash(&data, &mut bytes);
        bytes.push(b'"');
    }
    bytes.extend_from_slice(b"},\"data\":\"");
    let start = bytes.len();
    bytes.resize(start + encoded_len, 0);
    let written = B64
        .encode_slice(&data, &mut bytes[start..])
        .expect("room for the base64 was made");
    bytes.truncate(start + written);
    bytes.push(b'"');
    for (key, value) in [
        (&b",\"messageId\":"[..], message_id),
        (b",\"message_id\":", message_id),
        (b",\"publishTime\":", publish_time),
        (b",\"publish_time\":", publish_time),
        (b"},\"subscription\":", subscription),
    ] {
        bytes.extend_from_slice(key);
        push_json_string(&mut bytes, value);
    }
    bytes.push(b'}');
    bytes
}

/// `text` as a JSON string, as serde_json writes it. Ids and times need no escape: they
/// are copied as they are (through serde_json's escaping, byte by byte, these five
/// strings cost more than the rest of the envelope: figure 2's profile, thirteenth pass).
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // What serde_json escapes: control characters, the quote and the backslash. Every
    // byte is looked at, without stopping early, so the check runs many bytes at a time.
    let plain = text.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    });
    if plain {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, text).expect("strings serialize");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::members_hash;

    fn full_person() -> Person {
        let mut person = sample_person();
        person.remove("personID");
        person.insert(
            "consents".into(),
            serde_json::json!({"app-1": ["members.email"], "app-2": []}),
        );
        person
    }

    #[test]
    fn each_scope_opens_exactly_its_fields() {
        let id = RecordId::parse("p-1").unwrap();
        let person = full_person();
        let always = ["lastChangedDate", "personID"];
        let none = scoped_person(&id, &person, &[]).to_map();
        assert_eq!(none.keys().collect::<Vec<_>>(), always);
        assert_eq!(none["personID"], "p-1");
        for (scope, fields) in SCOPE_FIELDS {
            let scoped = scoped_person(&id, &person, &[(*scope).to_owned()]).to_map();
            let mut expected: Vec<&str> = always.iter().chain(fields.iter()).copied().collect();
            expected.sort();
            let got: Vec<&str> = scoped.keys().map(String::as_str).collect();
            assert_eq!(got, expected, "{scope}");
            for field in *fields {
                assert_eq!(scoped[*field], person[*field], "{scope} {field}");
            }
        }
        let all: Vec<String> = SCOPE_FIELDS.iter().map(|(s, _)| (*s).to_owned()).collect();
        let everything = scoped_person(&id, &person, &all).to_map();
        assert_eq!(
            everything.len(),
            2 + SCOPE_FIELDS.iter().map(|(_, f)| f.len()).sum::<usize>()
        );
        assert!(!everything.contains_key("consents"));
    }

    #[test]
    fn a_scoped_persons_debug_form_names_its_fields_and_shows_no_value() {
        let id = RecordId::parse("p-1").unwrap();
        let scoped = scoped_person(&id, &full_person(), &["members.email".into()]);
        let shown = format!("{scoped:?}");
        assert_eq!(
            shown,
            r#"ScopedPerson(["email", "lastChangedDate", "personID"])"#
        );
        assert!(!shown.contains("ada@example.org"));
    }

    #[test]
    fn unknown_scopes_open_nothing() {
        let id = RecordId::parse("p-1").unwrap();
        let scoped = scoped_person(&id, &full_person(), &["members.everything".into()]).to_map();
        assert_eq!(scoped.len(), 2);
    }

    fn app(id: &str) -> ApplicationId {
        ApplicationId::parse(id).unwrap()
    }

    #[test]
    fn consent_entries() {
        let mut person = full_person();
        assert_eq!(
            consented_scopes(&person, &app("app-1")),
            Some(vec!["members.email".to_owned()])
        );
        assert_eq!(consented_scopes(&person, &app("app-2")), Some(vec![]));
        assert_eq!(consented_scopes(&person, &app("app-3")), None);
        assert_eq!(consents(&person).len(), 2);
        assert!(consents(&Person::new()).is_empty());
        person["consents"]["not an application id"] = serde_json::json!(["members.email"]);
        assert_eq!(
            consents(&person)
                .into_iter()
                .map(|(app, _)| app.to_string())
                .collect::<Vec<_>>(),
            ["app-1", "app-2"],
            "a key no application can have is skipped"
        );
    }

    #[test]
    fn envelope_shape_and_hash() {
        let id = RecordId::parse("p-1").unwrap();
        let person = scoped_person(&id, &full_person(), &["members.email".into()]);
        let body = envelope(
            std::slice::from_ref(&person),
            Some(&"helloWorld".into()),
            "msg_1",
            "2021-02-26T19:13:55.749Z",
            "app-1",
        );
        let json: Value = serde_json::from_slice(&body).unwrap();
        let message = &json["message"];
        assert_eq!(message["messageId"], "msg_1");
        assert_eq!(message["message_id"], "msg_1");
        assert_eq!(message["publishTime"], "2021-02-26T19:13:55.749Z");
        assert_eq!(message["publish_time"], "2021-02-26T19:13:55.749Z");
        assert_eq!(json["subscription"], "app-1");
        let data = B64.decode(message["data"].as_str().unwrap()).unwrap();
        let decoded: Vec<Map<String, Value>> = serde_json::from_slice(&data).unwrap();
        assert_eq!(decoded, vec![person.to_map()]);
        assert_eq!(
            message["attributes"]["hash"],
            members_hash("helloWorld", &data)
        );
        let unsigned: Value = serde_json::from_slice(&envelope(&[], None, "m", "t", "s")).unwrap();
        assert_eq!(unsigned["message"]["attributes"], serde_json::json!({}));
    }

    #[test]
    fn a_scoped_person_is_read_as_the_json_object_it_was_written_as() {
        let person = ScopedPerson::from_map(&sample_person());
        assert_eq!(
            person.json(),
            serde_json::to_string(&sample_person()).unwrap()
        );
        assert_eq!(person.to_map(), sample_person());
        let read: ScopedPerson =
            serde_json::from_str(&serde_json::to_string(&person).unwrap()).unwrap();
        assert_eq!(read.json(), person.json(), "its text kept as it was");
        // The same object written otherwise (spaces, an escape) is the same person.
        let spaced: ScopedPerson =
            serde_json::from_str(r#"{ "firstName" : "A\u00e9", "personID": "p-1" }"#).unwrap();
        let plain = ScopedPerson::from_map(
            serde_json::json!({"personID": "p-1", "firstName": "Aé"})
                .as_object()
                .unwrap(),
        );
        assert_eq!(spaced, plain);
        assert_ne!(spaced, ScopedPerson::from_map(&Map::new()));
        for not_an_object in ["[]", "\"p-1\"", "null", "3", "{", ""] {
            assert!(
                serde_json::from_str::<ScopedPerson>(not_an_object).is_err(),
                "{not_an_object:?}"
            );
        }
    }

    #[test]
    fn the_envelope_data_is_the_persons_json_as_written() {
        let a: ScopedPerson = serde_json::from_str(r#"{"personID":"a"}"#).unwrap();
        let b: ScopedPerson = serde_json::from_str(r#"{"personID":"b\uFFFF"}"#).unwrap();
        let body = envelope(&[a, b], None, "m", "t", "s");
        let json: Value = serde_json::from_slice(&body).unwrap();
        let data = B64
            .decode(json["message"]["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(data, br#"[{"personID":"a"},{"personID":"b\uFFFF"}]"#);
    }

    #[test]
    fn envelope_bytes_are_those_of_its_json_value() {
        // Receivers verify the Standard Webhooks signature over these exact bytes: the
        // envelope is serialized as a `Value` with the same content would be (keys sorted).
        let person = sample_person();
        let cases = [
            (Some("helloWorld"), "app-1"),
            (None, "app-1"),
            (Some("helloWorld"), "app\\1\u{1f}\u{7f}é"),
        ];
        for (key, subscription) in cases {
            let body = envelope(
                &[ScopedPerson::from_map(&person)],
                key.map(SigningKey::from).as_ref(),
                "msg_\"1\"",
                "2021-02-26T19:13:55.749Z",
                subscription,
            );
            let data = serde_json::to_vec(&[&person]).unwrap();
            let mut attributes = Map::new();
            if let Some(key) = key {
                attributes.insert("hash".into(), members_hash(key, &data).into());
            }
            let value = serde_json::json!({
                "message": {
                    "attributes": attributes,
                    "data": B64.encode(&data),
                    "messageId": "msg_\"1\"",
                    "message_id": "msg_\"1\"",
                    "publishTime": "2021-02-26T19:13:55.749Z",
                    "publish_time": "2021-02-26T19:13:55.749Z",
                },
                "subscription": subscription,
            });
            assert_eq!(
                String::from_utf8(body).unwrap(),
                serde_json::to_string(&value).unwrap()
            );
        }
    }
}
