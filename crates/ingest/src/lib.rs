//! MQTT ingest. A rumqttc event loop feeds received publishes into a bounded queue; a batcher
//! decodes, validates and pseudonymises them and gathers them into batches by count and time;
//! a committer writes each batch durably and only then acknowledges its messages, in arrival
//! order. Rejected messages are counted and acknowledged with their batch, so they never loop.
//! Design notes: `DESIGN.md` beside this crate.

mod broker;
pub mod metrics;
mod pipeline;
mod url;

pub use broker::{EmbeddedBroker, EmbeddedBrokerError};
pub use pipeline::{Ingest, IngestConfig, IngestError, IngestStatus, TlsFiles};
pub use url::{BrokerUrl, BrokerUrlError};
