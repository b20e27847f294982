use meterstand_model::ValueError;

/// Why a message was refused. The label feeds `meterstand_ingest_rejected_total{reason}`;
/// no variant carries any part of the input, so a reject can be logged as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    #[error("topic is not {{prefix}}/{{ean}}/{{json|bincode|p1}}")]
    BadTopic,
    #[error("EAN in the topic is not 18 digits with a valid check digit")]
    BadEan,
    #[error("payload exceeds ingest.max_payload_bytes")]
    Oversize,
    #[error("payload cannot be decoded")]
    Malformed,
    #[error("meter id is not 1-34 ASCII letters and digits")]
    BadMeterId,
    #[error("message holds more readings than ingest.max_readings_per_message")]
    TooManyReadings,
    #[error("unknown OBIS register")]
    UnknownObis,
    #[error("unit does not match the register (kWh for electricity, m3 for gas)")]
    WrongUnit,
    #[error("value is negative")]
    NegativeValue,
    #[error("value is not a decimal with at most 3 decimals")]
    BadValue,
    #[error("value exceeds the plausible maximum")]
    AbsurdValue,
    #[error("time is not RFC 3339")]
    BadTime,
    #[error("time lies too far in the future")]
    FutureTime,
    #[error("time lies on no quarter-hour, hour, day or month boundary")]
    OffBoundary,
    #[error("P1 telegram CRC is missing or does not match its contents")]
    CrcMismatch,
    #[error("P1 telegram is truncated, malformed, over its line bounds or repeats a register")]
    BadTelegram,
}

impl Reject {
    pub const ALL: [Reject; 16] = [
        Reject::BadTopic,
        Reject::BadEan,
        Reject::Oversize,
        Reject::Malformed,
        Reject::BadMeterId,
        Reject::TooManyReadings,
        Reject::UnknownObis,
        Reject::WrongUnit,
        Reject::NegativeValue,
        Reject::BadValue,
        Reject::AbsurdValue,
        Reject::BadTime,
        Reject::FutureTime,
        Reject::OffBoundary,
        Reject::CrcMismatch,
        Reject::BadTelegram,
    ];

    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Reject::BadTopic => "bad_topic",
            Reject::BadEan => "bad_ean",
            Reject::Oversize => "oversize",
            Reject::Malformed => "malformed",
            Reject::BadMeterId => "bad_meter_id",
            Reject::TooManyReadings => "too_many_readings",
            Reject::UnknownObis => "unknown_obis",
            Reject::WrongUnit => "wrong_unit",
            Reject::NegativeValue => "negative_value",
            Reject::BadValue => "bad_value",
            Reject::AbsurdValue => "absurd_value",
            Reject::BadTime => "bad_time",
            Reject::FutureTime => "future_time",
            Reject::OffBoundary => "off_boundary",
            Reject::CrcMismatch => "crc_mismatch",
            Reject::BadTelegram => "bad_telegram",
        }
    }
}

impl From<ValueError> for Reject {
    fn from(e: ValueError) -> Self {
        match e {
            ValueError::Negative => Reject::NegativeValue,
            ValueError::Absurd { .. } => Reject::AbsurdValue,
            ValueError::TooPrecise | ValueError::NotANumber => Reject::BadValue,
        }
    }
}
