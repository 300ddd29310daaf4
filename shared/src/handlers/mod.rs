//! The Lambda handlers, generic over the ports: the Lambda `main`s and the local runner
//! call exactly these.

pub mod api_error;
mod applications;
mod attempt_routes;
pub mod change_capture;
pub mod console;
pub mod delivery;
pub mod flush;
pub mod outbound;
pub mod registration;
pub mod replay;
pub mod sync_driver;
pub mod views;

pub use change_capture::ChangeCapture;
pub use delivery::{Delivery, DeliverySettings};
pub use flush::{Flush, FlushError, FlushEvent, FlushReport, FlushSettings};
pub use registration::{ApiSettings, Registration};
pub use replay::{ParkedReplay, ParkedReplayer};
