//! `meterstand`: ingest smart-meter readings from MQTT, pseudonymise every identifier before
//! it touches disk, keep readings per consent and retention, and serve them. The binary is a
//! thin `main` over this library, so that end-to-end tests run the service in-process
//! ([`service::Service::start`]) against the code they were compiled with.

pub mod access;
pub mod audit;
pub mod backup;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod service;
pub mod simulate;
