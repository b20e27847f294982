//! An attacker over published figures, for tests: can any combination of what an analyst has
//! seen isolate between 1 and k-1 connections?
//!
//! A figure is modelled as the set of (member, slot) pairs it sums, a slot being the finest
//! time unit (a quarter-hour): a day figure over members M holds M × the day's slots. A
//! linear combination of figures reveals the sum over the pairs where its coefficients do not
//! cancel; it isolates the members of those pairs.
//!
//! [`attack`] reports:
//! - [`FindingKind::Difference`]: two figures whose difference covers 1..k-1 members
//!   (nested sets: across groupings, across time; or overlapping ones).
//! - [`FindingKind::RowMinusFamily`]: a figure minus the sum of the disjoint figures of one
//!   family (e.g. one granularity and view) that meet it, covering 1..k-1 members (a day
//!   minus its quarter-hours).
//! - [`FindingKind::SmallAtom`]: a class of pairs that lie in exactly the same figures
//!   ("atom") with 1..k-1 members. Every linear combination is constant on atoms, so if no
//!   atom is small, no combination whatsoever isolates fewer than k members. A small atom is
//!   not always reachable, so this check is sound but conservative.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::MemberId;

/// One (member, slot) pair.
pub type Element = (MemberId, u32);

/// One published figure as the attacker knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figure {
    /// For reports: what the figure is (period, granularity, view, row).
    pub label: String,
    /// Figures of one family are disjoint and may be summed: e.g. one release × granularity ×
    /// view, over all its periods.
    pub family: String,
    pub elements: BTreeSet<Element>,
}

impl Figure {
    /// A figure over `members` × `slots`.
    pub fn new(
        label: impl Into<String>,
        family: impl Into<String>,
        members: impl IntoIterator<Item = MemberId>,
        slots: impl IntoIterator<Item = u32> + Clone,
    ) -> Figure {
        let mut elements = BTreeSet::new();
        for m in members {
            for s in slots.clone() {
                elements.insert((m, s));
            }
        }
        Figure {
            label: label.into(),
            family: family.into(),
            elements,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FindingKind {
    Difference,
    RowMinusFamily,
    SmallAtom,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    /// The figures combined (for an atom: one figure it lies in, if any).
    pub labels: Vec<String>,
    /// Members isolated: 1..k-1.
    pub members: usize,
}

fn members_of<'a>(elements: impl Iterator<Item = &'a Element>) -> usize {
    elements.map(|(m, _)| *m).collect::<BTreeSet<_>>().len()
}

/// Runs every check over `figures` (empty figures are ignored, duplicates are merged).
pub fn attack(figures: &[Figure], k: u32) -> Vec<Finding> {
    let k = usize::try_from(k.max(1)).unwrap_or(usize::MAX);
    let known = Known::new(figures);
    let mut findings = known.differences(k);
    findings.extend(known.rows_minus_families(k));
    findings.extend(known.small_atoms(k));
    findings
}

/// Whether `n` members are isolated: some, fewer than k.
fn small(n: usize, k: usize) -> bool {
    n > 0 && n < k
}

/// The distinct figures an attacker holds, and which of them each element lies in.
struct Known<'a> {
    distinct: Vec<&'a Figure>,
    index: HashMap<Element, Vec<usize>>,
}

impl<'a> Known<'a> {
    fn new(figures: &'a [Figure]) -> Known<'a> {
        // Distinct figures (a frozen row seen twice is one figure).
        let mut distinct: Vec<&Figure> = Vec::new();
        let mut seen: HashSet<&BTreeSet<Element>> = HashSet::new();
        for f in figures {
            if !f.elements.is_empty() && seen.insert(&f.elements) {
                distinct.push(f);
            }
        }
        let mut index: HashMap<Element, Vec<usize>> = HashMap::new();
        for (i, f) in distinct.iter().enumerate() {
            for e in &f.elements {
                index.entry(*e).or_default().push(i);
            }
        }
        Known { distinct, index }
    }

    /// Pairwise differences of figures that meet.
    fn differences(&self, k: usize) -> Vec<Finding> {
        let mut pairs: BTreeSet<(usize, usize)> = BTreeSet::new();
        for ids in self.index.values() {
            for (x, &i) in ids.iter().enumerate() {
                for &j in &ids[x + 1..] {
                    pairs.insert((i.min(j), i.max(j)));
                }
            }
        }
        let mut findings = Vec::new();
        for (i, j) in pairs {
            let (a, b) = (&self.distinct[i].elements, &self.distinct[j].elements);
            let n = members_of(a.symmetric_difference(b));
            if small(n, k) {
                findings.push(Finding {
                    kind: FindingKind::Difference,
                    labels: vec![
                        self.distinct[i].label.clone(),
                        self.distinct[j].label.clone(),
                    ],
                    members: n,
                });
            }
        }
        findings
    }

    /// A figure minus the figures of one other family that meet it.
    fn rows_minus_families(&self, k: usize) -> Vec<Finding> {
        let mut findings = Vec::new();
        for (i, a) in self.distinct.iter().enumerate() {
            let mut met: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
            for e in &a.elements {
                for &j in &self.index[e] {
                    if j != i && self.distinct[j].family != a.family {
                        met.entry(self.distinct[j].family.as_str())
                            .or_default()
                            .insert(j);
                    }
                }
            }
            for (family, parts) in met {
                let union: BTreeSet<Element> = parts
                    .iter()
                    .flat_map(|&j| self.distinct[j].elements.iter().copied())
                    .collect();
                let total: usize = parts.iter().map(|&j| self.distinct[j].elements.len()).sum();
                if total != union.len() {
                    continue; // not disjoint: not a plain sum of sets
                }
                let n = members_of(a.elements.symmetric_difference(&union));
                if small(n, k) {
                    findings.push(Finding {
                        kind: FindingKind::RowMinusFamily,
                        labels: vec![
                            a.label.clone(),
                            format!("sum of {} of {family}", parts.len()),
                        ],
                        members: n,
                    });
                }
            }
        }
        findings
    }

    /// Atoms: elements grouped by the exact set of figures they lie in.
    fn small_atoms(&self, k: usize) -> Vec<Finding> {
        let mut atoms: HashMap<&[usize], BTreeSet<MemberId>> = HashMap::new();
        for (e, ids) in &self.index {
            atoms.entry(ids.as_slice()).or_default().insert(e.0);
        }
        let mut small_atoms: Vec<Finding> = atoms
            .into_iter()
            .filter(|(_, m)| small(m.len(), k))
            .map(|(ids, m)| Finding {
                kind: FindingKind::SmallAtom,
                labels: ids
                    .iter()
                    .map(|&i| self.distinct[i].label.clone())
                    .collect(),
                members: m.len(),
            })
            .collect();
        small_atoms.sort_by(|a, b| a.labels.cmp(&b.labels));
        small_atoms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(r: std::ops::Range<u64>) -> Vec<MemberId> {
        r.map(MemberId::from).collect()
    }

    #[test]
    fn finds_a_nested_difference_of_one() {
        let f = vec![
            Figure::new("1000", "by postcode", ids(0..13), [0]),
            Figure::new("1000 E1A", "by postcode,profile", ids(0..12), [0]),
        ];
        let found = attack(&f, 10);
        assert!(
            found
                .iter()
                .any(|x| x.kind == FindingKind::Difference && x.members == 1)
        );
    }

    #[test]
    fn finds_a_day_minus_its_quarter_hours() {
        let mut f = vec![Figure::new("day", "day", ids(0..11), 0..4)];
        for q in 0..4 {
            f.push(Figure::new(format!("q{q}"), "quarter", ids(0..10), [q]));
        }
        let found = attack(&f, 10);
        assert!(
            found
                .iter()
                .any(|x| x.kind == FindingKind::RowMinusFamily && x.members == 1)
        );
    }

    #[test]
    fn disjoint_rows_of_k_are_safe() {
        let f = vec![
            Figure::new("a", "rows", ids(0..10), [0]),
            Figure::new("b", "rows", ids(10..22), [0]),
            Figure::new("total", "total", ids(0..22), [0]),
        ];
        assert_eq!(attack(&f, 10), vec![]);
    }
}
