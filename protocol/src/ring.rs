//! The ring: which node owns each slot in an epoch, and the sticky weighted assignment that
//! computes the next ring from the current one. Pure logic, no I/O.
//!
//! Invariants proved by the property tests below:
//! - every live node owns `floor(S·w/W)` or `ceil(S·w/W)` slots (within one slot of its quota);
//! - an uncapped change moves exactly the minimum number of slots any valid assignment needs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Slot → owner for one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    pub epoch: u64,
    pub owners: Vec<Option<String>>,
}

/// Compact wire form: node names once, then an index per slot (`-1` = no owner).
#[derive(Serialize, Deserialize)]
struct RingWire {
    epoch: u64,
    nodes: Vec<String>,
    owners: Vec<i32>,
}

impl Serialize for Ring {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut nodes: Vec<String> = Vec::new();
        let mut index: BTreeMap<&str, i32> = BTreeMap::new();
        let owners = self
            .owners
            .iter()
            .map(|o| match o {
                None => -1,
                Some(n) => *index.entry(n.as_str()).or_insert_with(|| {
                    nodes.push(n.clone());
                    (nodes.len() - 1) as i32
                }),
            })
            .collect();
        RingWire {
            epoch: self.epoch,
            nodes,
            owners,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Ring {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = RingWire::deserialize(d)?;
        let owners = w
            .owners
            .iter()
            .map(|&i| match i {
                -1 => Ok(None),
                i if i >= 0 && (i as usize) < w.nodes.len() => {
                    Ok(Some(w.nodes[i as usize].clone()))
                }
                i => Err(serde::de::Error::custom(format!(
                    "ring owner index {i} out of range"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Ring {
            epoch: w.epoch,
            owners,
        })
    }
}

impl Ring {
    /// A ring of `slots` slots with no owners, epoch 0.
    pub fn empty(slots: u32) -> Self {
        Ring {
            epoch: 0,
            owners: vec![None; slots as usize],
        }
    }

    pub fn slots(&self) -> u32 {
        self.owners.len() as u32
    }

    /// The leader term this ring was published in (the high bits of its epoch; 0 without
    /// leader election).
    pub fn term(&self) -> u64 {
        term_of(self.epoch)
    }

    /// The epoch a leader of `term` gives the ring after this one, or `None` when this ring
    /// comes from a newer term (the caller has been deposed and must not publish).
    pub fn next_epoch(&self, term: u64) -> Option<u64> {
        match self.term().cmp(&term) {
            std::cmp::Ordering::Equal => Some(self.epoch + 1),
            std::cmp::Ordering::Less => Some(first_epoch(term)),
            std::cmp::Ordering::Greater => None,
        }
    }

    pub fn owner(&self, slot: u32) -> Option<&str> {
        self.owners.get(slot as usize).and_then(|o| o.as_deref())
    }

    /// Slots owned by `node`, ascending.
    pub fn slots_of(&self, node: &str) -> Vec<u32> {
        (0..self.slots())
            .filter(|&s| self.owner(s) == Some(node))
            .collect()
    }

    /// Number of slots per owner.
    pub fn counts(&self) -> BTreeMap<&str, usize> {
        let mut m = BTreeMap::new();
        for n in self.owners.iter().flatten() {
            *m.entry(n.as_str()).or_insert(0) += 1;
        }
        m
    }
}

/// Bits of an epoch below the leader term. Epoch = term · 2³² + sequence, so every epoch of a
/// newer term is greater than every epoch of an older one: nodes that apply only rising epochs
/// can never apply a deposed leader's ring once they have seen its successor's (fencing), and
/// every existing "newer epoch" comparison stays correct. Terms stay below 2²¹ in practice, so an
/// epoch stays below 2⁵³ and exact in JSON readers that use doubles.
pub const TERM_SHIFT: u32 = 32;

/// The term an epoch belongs to.
pub fn term_of(epoch: u64) -> u64 {
    epoch >> TERM_SHIFT
}

/// The first epoch of a term.
pub fn first_epoch(term: u64) -> u64 {
    (term << TERM_SHIFT) | 1
}

/// A node's quota: it must own `floor` or `floor + 1` slots (`floor + 1` only if `frac()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub floor: usize,
    rem: u128,
}

impl Quota {
    /// Whether S·w/W has a fractional part, i.e. the node may take one extra slot.
    pub fn frac(&self) -> bool {
        self.rem > 0
    }
}

/// Exact integer quotas for `slots` slots shared by weight (weights > 0 only).
pub fn quotas(slots: usize, weights: &BTreeMap<String, u64>) -> BTreeMap<String, Quota> {
    let total: u128 = weights.values().map(|&w| u128::from(w)).sum();
    weights
        .iter()
        .filter(|(_, &w)| w > 0)
        .map(|(n, &w)| {
            let x = slots as u128 * u128::from(w);
            let floor = (x / total) as usize;
            let rem = x % total;
            (n.clone(), Quota { floor, rem })
        })
        .collect()
}

/// The outcome of one assignment step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub owners: Vec<Option<String>>,
    /// Slots that changed owner.
    pub moved: usize,
    /// Of those, slots taken from dead, draining or absent owners (never capped).
    pub forced: usize,
    /// Moves wanted by the weights but held back by the cap.
    pub deferred: usize,
}

/// Computes the next owners from `current`, for live nodes with `weights` (milli-units; a node
/// with weight 0 or missing is not live). Slots of non-live owners always move; weight-driven
/// moves are capped at `max_moves`. Deterministic: every replica computes the same plan.
pub fn plan(current: &[Option<String>], weights: &BTreeMap<String, u64>, max_moves: usize) -> Plan {
    let s = current.len();
    let q = quotas(s, weights);
    if q.is_empty() {
        let moved = current.iter().filter(|o| o.is_some()).count();
        return Plan {
            owners: vec![None; s],
            moved,
            forced: moved,
            deferred: 0,
        };
    }
    // Current holdings of live nodes; everything else is orphaned.
    let mut held: BTreeMap<&str, Vec<usize>> = q.keys().map(|n| (n.as_str(), Vec::new())).collect();
    let mut orphans = Vec::new();
    for (slot, owner) in current.iter().enumerate() {
        match owner.as_deref().and_then(|o| held.get_mut(o)) {
            Some(v) => v.push(slot),
            None => orphans.push(slot),
        }
    }
    let targets = targets(s, &q, &held.iter().map(|(n, v)| (*n, v.len())).collect());

    // Donors give their highest slots, round-robin so a cap spreads the work.
    let mut excess: Vec<(&str, usize)> = held
        .iter()
        .filter_map(|(n, v)| {
            v.len()
                .checked_sub(targets[n])
                .filter(|&e| e > 0)
                .map(|e| (*n, e))
        })
        .collect();
    let wanted: usize = excess.iter().map(|(_, e)| e).sum();
    let budget = wanted.min(max_moves);
    let forced = orphans.len();
    let mut pool = orphans;
    let mut given = 0;
    while given < budget {
        for (n, e) in excess.iter_mut() {
            if *e > 0 && given < budget {
                let slot = held
                    .get_mut(n)
                    .and_then(|v| v.pop())
                    .expect("donor holds its excess");
                pool.push(slot);
                *e -= 1;
                given += 1;
            }
        }
    }

    // Receivers fill their deficits round-robin.
    let mut owners = current.to_vec();
    let mut deficit: Vec<(&str, usize)> = held
        .iter()
        .filter_map(|(n, v)| {
            targets[n]
                .checked_sub(v.len())
                .filter(|&d| d > 0)
                .map(|d| (*n, d))
        })
        .collect();
    let mut pool = pool.into_iter();
    'fill: loop {
        let mut progressed = false;
        for (n, d) in deficit.iter_mut() {
            if *d == 0 {
                continue;
            }
            let Some(slot) = pool.next() else { break 'fill };
            owners[slot] = Some((*n).to_string());
            *d -= 1;
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    debug_assert!(pool.next().is_none(), "deficits always absorb the pool");
    Plan {
        owners,
        moved: forced + given,
        forced,
        deferred: wanted - given,
    }
}

/// Chooses each node's target count: `floor`, plus one extra for exactly the `S - Σfloor` nodes
/// that gain most from it. A node already above its floor keeps a slot by taking an extra, so it
/// is preferred; then larger remainders; then the name, for determinism.
fn targets<'a>(
    slots: usize,
    q: &'a BTreeMap<String, Quota>,
    counts: &BTreeMap<&str, usize>,
) -> BTreeMap<&'a str, usize> {
    let extras = slots - q.values().map(|x| x.floor).sum::<usize>();
    let mut eligible: Vec<(&str, &Quota)> = q
        .iter()
        .filter(|(_, x)| x.frac())
        .map(|(n, x)| (n.as_str(), x))
        .collect();
    eligible.sort_by(|(a, qa), (b, qb)| {
        let ga = counts.get(a).copied().unwrap_or(0) > qa.floor;
        let gb = counts.get(b).copied().unwrap_or(0) > qb.floor;
        gb.cmp(&ga).then(qb.rem.cmp(&qa.rem)).then(a.cmp(b))
    });
    debug_assert!(
        eligible.len() >= extras,
        "Σ fractional parts equals the extras"
    );
    let mut t: BTreeMap<&str, usize> = q.iter().map(|(n, x)| (n.as_str(), x.floor)).collect();
    for (n, _) in eligible.into_iter().take(extras) {
        *t.get_mut(n).expect("eligible nodes have quotas") += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Fencing: whatever the sequence numbers, an epoch of a newer term is greater, a leader
        /// continues its own term, and a deposed leader gets no epoch to publish.
        #[test]
        fn epochs_of_a_newer_term_are_always_greater(
            t in 0u64..(1 << 20), seq in 1u64..u32::MAX as u64, later in 1u64..1000,
        ) {
            let ring = Ring { epoch: (t << TERM_SHIFT) | seq, owners: vec![] };
            prop_assert_eq!(ring.term(), t);
            prop_assert_eq!(ring.next_epoch(t), Some(ring.epoch + 1));
            let newer = ring.next_epoch(t + later).unwrap();
            prop_assert!(newer > ring.epoch);
            prop_assert_eq!(term_of(newer), t + later);
            let successor = Ring { epoch: newer, owners: vec![] };
            prop_assert_eq!(successor.next_epoch(t), None);
            prop_assert!(newer < 1 << 53);
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n{i}")).collect()
    }

    /// The least number of moves any valid assignment needs, by brute force over every choice
    /// of which nodes take an extra slot (independent of `plan`'s greedy choice).
    fn brute_min_moves(current: &[Option<String>], weights: &BTreeMap<String, u64>) -> usize {
        let q = quotas(current.len(), weights);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        let mut orphans = 0;
        for o in current {
            match o.as_deref().filter(|o| q.contains_key(*o)) {
                Some(o) => *counts.entry(o).or_default() += 1,
                None => orphans += 1,
            }
        }
        let extras = current.len() - q.values().map(|x| x.floor).sum::<usize>();
        let eligible: Vec<&String> = q.iter().filter(|(_, x)| x.frac()).map(|(n, _)| n).collect();
        let mut best = usize::MAX;
        for mask in 0u32..(1 << eligible.len()) {
            if mask.count_ones() as usize != extras {
                continue;
            }
            let mut moves = orphans;
            for (n, x) in &q {
                let bonus = eligible
                    .iter()
                    .position(|e| *e == n)
                    .map_or(0, |i| (mask >> i) & 1) as usize;
                let c = counts.get(n.as_str()).copied().unwrap_or(0);
                moves += c.saturating_sub(x.floor + bonus);
            }
            best = best.min(moves);
        }
        best
    }

    fn check_quota(plan: &Plan, weights: &BTreeMap<String, u64>) {
        let q = quotas(plan.owners.len(), weights);
        let ring = Ring {
            epoch: 1,
            owners: plan.owners.clone(),
        };
        let counts = ring.counts();
        for o in &plan.owners {
            let o = o
                .as_deref()
                .expect("every slot has an owner while a node is live");
            assert!(q.contains_key(o), "owner {o} is live");
        }
        for (n, x) in &q {
            let c = counts.get(n.as_str()).copied().unwrap_or(0);
            assert!(
                c == x.floor || (x.frac() && c == x.floor + 1),
                "{n}: {c} slots, quota {x:?}"
            );
        }
    }

    fn arb_case() -> impl Strategy<Value = (Vec<Option<String>>, BTreeMap<String, u64>)> {
        (1usize..300, 1usize..9, 0usize..4).prop_flat_map(|(slots, live, dead)| {
            let weights = proptest::collection::vec(1u64..2000, live);
            let owners = proptest::collection::vec(0usize..(live + dead + 1), slots);
            (weights, owners).prop_map(move |(w, o)| {
                let all = names(live + dead);
                let weights: BTreeMap<String, u64> =
                    all.iter().take(live).cloned().zip(w).collect();
                let owners = o.into_iter().map(|i| all.get(i).cloned()).collect();
                (owners, weights)
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn plan_meets_quota_with_minimal_moves((current, weights) in arb_case()) {
            let p = plan(&current, &weights, usize::MAX);
            check_quota(&p, &weights);
            let changed = current.iter().zip(&p.owners).filter(|(a, b)| a != b).count();
            prop_assert_eq!(changed, p.moved);
            prop_assert_eq!(p.moved, brute_min_moves(&current, &weights));
            prop_assert_eq!(p.deferred, 0);
        }

        #[test]
        fn plan_is_stable((current, weights) in arb_case()) {
            let p = plan(&current, &weights, usize::MAX);
            let again = plan(&p.owners, &weights, usize::MAX);
            prop_assert_eq!(again.moved, 0);
            prop_assert_eq!(again.owners, p.owners);
        }

        /// A sequence of joins, leaves and weight changes: each step is minimal and in quota.
        #[test]
        fn plan_sequence_joins_leaves_reweights(
            slots in 1usize..300,
            steps in proptest::collection::vec((0usize..8, 0u64..1500), 1..25),
        ) {
            let mut weights: BTreeMap<String, u64> = BTreeMap::new();
            let mut owners: Vec<Option<String>> = vec![None; slots];
            for (node, w) in steps {
                let name = format!("n{node}");
                if w == 0 { weights.remove(&name); } else { weights.insert(name, w); }
                if weights.is_empty() { continue; }
                let p = plan(&owners, &weights, usize::MAX);
                check_quota(&p, &weights);
                prop_assert_eq!(p.moved, brute_min_moves(&owners, &weights));
                owners = p.owners;
            }
        }

        /// With a cap, forced moves still all happen, weight moves never exceed the cap, and
        /// repeating the capped step converges to the uncapped plan's counts.
        #[test]
        fn capped_plan_converges((current, weights) in arb_case(), cap in 0usize..5) {
            let mut owners = current;
            let first = plan(&owners, &weights, cap);
            prop_assert!(first.moved - first.forced <= cap);
            prop_assert!(first.owners.iter().all(|o| o.as_deref().is_some_and(|o| weights.contains_key(o))));
            owners = first.owners;
            for _ in 0..400 {
                let p = plan(&owners, &weights, cap.max(1));
                prop_assert_eq!(p.forced, 0);
                owners = p.owners;
                if p.deferred == 0 { break; }
            }
            check_quota(&Plan { owners, moved: 0, forced: 0, deferred: 0 }, &weights);
        }
    }

    #[test]
    fn equal_weights_split_evenly() {
        let w: BTreeMap<String, u64> = names(3).into_iter().map(|n| (n, 1000)).collect();
        let p = plan(&vec![None; 256], &w, usize::MAX);
        let ring = Ring {
            epoch: 1,
            owners: p.owners,
        };
        let mut counts: Vec<usize> = ring.counts().values().copied().collect();
        counts.sort();
        assert_eq!(counts, vec![85, 85, 86]);
    }

    #[test]
    fn a_leaving_node_moves_only_its_slots() {
        let mut w: BTreeMap<String, u64> = names(4).into_iter().map(|n| (n, 1000)).collect();
        let before = plan(&vec![None; 256], &w, usize::MAX).owners;
        w.remove("n3");
        let after = plan(&before, &w, 0);
        assert_eq!(
            after.moved, 64,
            "exactly n3's 64 slots move, even with a zero cap"
        );
        for (a, b) in before.iter().zip(&after.owners) {
            if a.as_deref() != Some("n3") {
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn ring_wire_roundtrip() {
        let ring = Ring {
            epoch: 7,
            owners: vec![Some("a".into()), None, Some("b".into()), Some("a".into())],
        };
        let json = serde_json::to_string(&ring).unwrap();
        assert_eq!(json, r#"{"epoch":7,"nodes":["a","b"],"owners":[0,-1,1,0]}"#);
        assert_eq!(serde_json::from_str::<Ring>(&json).unwrap(), ring);
        assert!(serde_json::from_str::<Ring>(r#"{"epoch":1,"nodes":[],"owners":[0]}"#).is_err());
    }
}
