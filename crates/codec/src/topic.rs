use meterstand_model::Ean;

use crate::Reject;

/// Payload format, the last topic level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Bincode,
    /// A raw DSMR P1 telegram (`p1` module).
    P1,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Bincode => "bincode",
            Format::P1 => "p1",
        }
    }
}

/// Splits `{prefix}/{ean}/{format}` into a validated EAN and a format.
pub fn parse_topic(prefix: &str, topic: &str) -> Result<(Ean, Format), Reject> {
    let rest = topic
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or(Reject::BadTopic)?;
    let (ean, format) = rest.split_once('/').ok_or(Reject::BadTopic)?;
    let format = match format {
        "json" => Format::Json,
        "bincode" => Format::Bincode,
        "p1" => Format::P1,
        _ => return Err(Reject::BadTopic),
    };
    let ean: Ean = ean.parse().map_err(|_| Reject::BadEan)?;
    Ok((ean, format))
}
