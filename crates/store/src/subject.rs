//! One privacy state per subject, across every key version and every path.
//!
//! A subject's state is its connection record (the CRM's: consent, postcode, profile) plus
//! [`SubjectState`], which only the privacy officer and erasure change: an objection, an
//! erasure, and the instant before which its readings serve billing only. The state is kept
//! under each of the subject's pseudonyms (every key version known when it changed) and is
//! carried to a new key version when the connection is seen under it, so it holds for as
//! long as any of the subject's data is kept (`docs/design.md`, "One privacy state per
//! subject").
//!
//! [`open_to_analysis`] is the one rule every analytical output goes through: a member
//! counts only with a known and open state. "No record" is never "open".

use jiff::Timestamp;
use meterstand_model::{ConsentLevel, Tier};

use crate::Member;

/// What the privacy officer and erasure recorded for a subject. The default (nothing
/// recorded) is the state of a subject that never objected and was never erased.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubjectState {
    /// An objection to analytical use (GDPR Art. 21) is in force: the subject keeps its
    /// billing tiers and is in no analytical output. Only the privacy officer withdraws it;
    /// CRM updates, imports, consent changes, erasure and re-registration keep it.
    pub objected: bool,
    /// Erased and not registered again: readings are gated like consent `off`.
    pub erased: bool,
    /// Readings before this instant serve billing only and are in no analytical output,
    /// whatever the state becomes later: set when the subject is erased, when its consent
    /// goes to `off`, and when an objection is withdrawn (what was kept while the subject
    /// objected or had no consent stays out).
    pub sealed_before: Option<Timestamp>,
}

impl SubjectState {
    /// The union of two states: an objection, an erasure or a seal under any key version
    /// holds for the subject.
    pub fn union(self, other: SubjectState) -> SubjectState {
        SubjectState {
            objected: self.objected || other.objected,
            erased: self.erased || other.erased,
            sealed_before: self.sealed_before.max(other.sealed_before),
        }
    }

    /// The union over several states.
    pub fn union_all(states: impl IntoIterator<Item = SubjectState>) -> SubjectState {
        states
            .into_iter()
            .fold(SubjectState::default(), SubjectState::union)
    }

    /// Whether nothing is recorded (no entry needs to be kept).
    pub fn is_empty(&self) -> bool {
        *self == SubjectState::default()
    }

    /// Seals everything before `now` (keeps a later seal).
    pub fn seal(&mut self, now: Timestamp) {
        self.sealed_before = self.sealed_before.max(Some(now));
    }

    /// The state after the CRM registers or updates the connection with `consent`: an
    /// erased subject is registered again (its held history stays sealed), consent `off`
    /// seals what is kept, an objection stays.
    pub fn after_registration(mut self, consent: ConsentLevel, now: Timestamp) -> SubjectState {
        self.erased = false;
        if consent == ConsentLevel::Off {
            self.seal(now);
        }
        self
    }

    /// The state after an erasure at `now`.
    pub fn after_erasure(mut self, now: Timestamp) -> SubjectState {
        self.erased = true;
        self.seal(now);
        self
    }

    /// The state after the privacy officer records (`true`) or withdraws (`false`) an
    /// objection at `now`. Withdrawing seals what was kept while the objection held.
    pub fn after_objection(mut self, objected: bool, now: Timestamp) -> SubjectState {
        if self.objected && !objected {
            self.seal(now);
        }
        self.objected = objected;
        self
    }
}

/// Whether a member's readings of `tier` may count in the analytical figures of the
/// period starting at `period_start`: it has a connection record under this very
/// pseudonym (after a key rotation only the current version has one; older versions'
/// readings count nowhere), its consent allows the tier (held month readings of a subject
/// with consent `off` do not count), it has not objected and is not erased, and the period
/// lies after any seal.
pub fn open_to_analysis(member: &Member<'_>, tier: Tier, period_start: Timestamp) -> bool {
    let Some(connection) = member.connection else {
        return false;
    };
    let state = &member.state;
    connection.consent.allowed_tiers().contains(tier)
        && !state.objected
        && !state.erased
        && state.sealed_before.is_none_or(|s| period_start >= s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn an_objection_survives_registration_and_erasure() {
        let now = t("2026-12-01T00:00:00Z");
        let s = SubjectState::default().after_objection(true, now);
        let s = s.after_registration(ConsentLevel::Interval, now);
        assert!(s.objected);
        let s = s
            .after_erasure(now)
            .after_registration(ConsentLevel::Daily, now);
        assert!(s.objected && !s.erased);
        assert_eq!(
            s.sealed_before,
            Some(now),
            "the erased history stays sealed"
        );
    }

    #[test]
    fn withdrawing_seals_what_was_kept_while_objecting() {
        let (a, b) = (t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z"));
        let s = SubjectState::default().after_objection(true, a);
        assert_eq!(s.sealed_before, None);
        let s = s.after_objection(false, b);
        assert_eq!((s.objected, s.sealed_before), (false, Some(b)));
        // Withdrawing again changes nothing.
        assert_eq!(s.after_objection(false, t("2026-12-02T00:00:00Z")), s);
    }

    #[test]
    fn the_union_keeps_every_restriction() {
        let (a, b) = (t("2026-11-01T00:00:00Z"), t("2026-12-01T00:00:00Z"));
        let x = SubjectState {
            objected: true,
            erased: false,
            sealed_before: Some(a),
        };
        let y = SubjectState {
            objected: false,
            erased: true,
            sealed_before: Some(b),
        };
        assert_eq!(
            x.union(y),
            SubjectState {
                objected: true,
                erased: true,
                sealed_before: Some(b)
            }
        );
        assert!(SubjectState::default().is_empty());
        assert!(
            SubjectState::default()
                .after_registration(ConsentLevel::Off, a)
                .sealed_before
                .is_some()
        );
    }
}
