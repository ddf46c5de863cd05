//! etcd's semantics for one key, as a model for the checker. Every value in
//! a run is unique (an integer id), and every lease is attached to at most
//! one put, so each key's history can be checked on its own.
//!
//! Besides values, the model checks revisions: a write that took effect
//! later has a higher revision, and a read returns the revision of the write
//! it sees.

use super::checker::Model;

/// One key's state. `rev` is the revision of the last change (0 before the
/// first), None while it is the unseen revision of a write whose answer was lost.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyState {
    pub value: Option<u64>,
    pub rev: Option<i64>,
    /// The lease the current value is attached to (0 for none).
    pub lease: i64,
}

#[derive(Debug, Clone)]
pub enum Input {
    Get,
    Put {
        value: u64,
        lease: i64,
    },
    Delete,
    /// Txn: if the value is `expect` (None: the key is absent) then put
    /// `value`, else get the key.
    Cas {
        expect: Option<u64>,
        value: u64,
    },
    Revoke {
        lease: i64,
    },
}

#[derive(Debug, Clone)]
pub enum Output {
    /// A write whose answer was never seen.
    Unknown,
    Get {
        value: Option<u64>,
        mod_rev: i64,
    },
    Put {
        rev: i64,
    },
    Delete {
        deleted: bool,
        rev: i64,
    },
    /// `seen` is the else branch's read when the compare failed.
    Cas {
        succeeded: bool,
        rev: i64,
        seen: Option<(u64, i64)>,
    },
    Revoke {
        rev: i64,
    },
}

pub struct Kv;

/// A change at `rev` must come after the current one.
fn later(state: &KeyState, rev: i64) -> bool {
    state.rev.is_none_or(|r| rev > r)
}

/// A read answered `value` at `mod_rev`; learns a revision that was unseen.
fn read(state: &KeyState, value: Option<u64>, mod_rev: i64) -> Option<KeyState> {
    if value != state.value {
        return None;
    }
    match (value, state.rev) {
        (None, _) => Some(state.clone()),
        (Some(_), Some(r)) => (r == mod_rev).then(|| state.clone()),
        (Some(_), None) => Some(KeyState { rev: Some(mod_rev), ..state.clone() }),
    }
}

fn set(value: Option<u64>, rev: Option<i64>, lease: i64) -> Option<KeyState> {
    Some(KeyState { value, rev, lease })
}

impl Model for Kv {
    type State = KeyState;
    type Input = Input;
    type Output = Output;

    fn init() -> KeyState {
        KeyState { value: None, rev: Some(0), lease: 0 }
    }

    fn step(s: &KeyState, input: &Input, output: &Output) -> Option<KeyState> {
        match (input, output) {
            (Input::Get, Output::Get { value, mod_rev }) => read(s, *value, *mod_rev),
            (Input::Put { value, lease }, Output::Put { rev }) => {
                later(s, *rev).then_some(())?;
                set(Some(*value), Some(*rev), *lease)
            }
            (Input::Put { value, lease }, Output::Unknown) => set(Some(*value), None, *lease),
            (Input::Delete, Output::Delete { deleted, rev }) => match (deleted, s.value) {
                (true, Some(_)) if later(s, *rev) => set(None, Some(*rev), 0),
                (false, None) if s.rev.is_none_or(|r| *rev >= r) => Some(s.clone()),
                _ => None,
            },
            (Input::Delete, Output::Unknown) if s.value.is_none() => Some(s.clone()),
            (Input::Delete, Output::Unknown) => set(None, None, 0),
            (Input::Cas { expect, value }, Output::Cas { succeeded, rev, seen }) => {
                if *succeeded != (s.value == *expect) {
                    return None;
                }
                if *succeeded {
                    later(s, *rev).then_some(())?;
                    return set(Some(*value), Some(*rev), 0);
                }
                match seen {
                    Some((v, r)) => read(s, Some(*v), *r),
                    None => read(s, None, 0),
                }
            }
            (Input::Cas { expect, value }, Output::Unknown) if s.value == *expect => set(Some(*value), None, 0),
            (Input::Cas { .. }, Output::Unknown) => Some(s.clone()),
            (Input::Revoke { lease }, out) => {
                let attached = s.lease == *lease && s.value.is_some();
                match (attached, out) {
                    (false, Output::Revoke { .. } | Output::Unknown) => Some(s.clone()),
                    (true, Output::Revoke { rev }) if later(s, *rev) => set(None, Some(*rev), 0),
                    (true, Output::Unknown) => set(None, None, 0),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::checker::{Operation, Verdict, check};
    use super::*;

    fn op(call: u64, ret: u64, input: Input, output: Output) -> Operation<Input, Output> {
        Operation { client: 0, call, ret, input, output }
    }

    fn verdict(h: &[Operation<Input, Output>]) -> Verdict {
        check::<Kv>(h, 1 << 20)
    }

    #[test]
    fn a_read_must_return_the_revision_of_the_write_it_sees() {
        let put = op(0, 1, Input::Put { value: 7, lease: 0 }, Output::Put { rev: 5 });
        let good = op(2, 3, Input::Get, Output::Get { value: Some(7), mod_rev: 5 });
        let bad = op(2, 3, Input::Get, Output::Get { value: Some(7), mod_rev: 4 });
        assert!(matches!(verdict(&[put.clone(), good]), Verdict::Linearizable));
        assert!(matches!(verdict(&[put, bad]), Verdict::Illegal(_)));
    }

    #[test]
    fn revisions_follow_the_real_time_order_of_writes() {
        let a = op(0, 1, Input::Put { value: 1, lease: 0 }, Output::Put { rev: 9 });
        let b = op(2, 3, Input::Put { value: 2, lease: 0 }, Output::Put { rev: 8 });
        assert!(matches!(verdict(&[a, b]), Verdict::Illegal(_)));
    }

    #[test]
    fn a_lost_answer_is_learned_from_a_later_read() {
        let put = op(0, u64::MAX, Input::Put { value: 3, lease: 0 }, Output::Unknown);
        let get = op(5, 6, Input::Get, Output::Get { value: Some(3), mod_rev: 12 });
        let del = op(7, 8, Input::Delete, Output::Delete { deleted: true, rev: 11 });
        assert!(matches!(verdict(&[put.clone(), get.clone()]), Verdict::Linearizable));
        // The delete came after the read that saw revision 12, so it cannot be 11.
        assert!(matches!(verdict(&[put, get, del]), Verdict::Illegal(_)));
    }

    #[test]
    fn compare_and_swap_and_revoke() {
        let h = [
            op(0, 1, Input::Put { value: 1, lease: 77 }, Output::Put { rev: 2 }),
            op(
                2,
                3,
                Input::Cas { expect: Some(5), value: 6 },
                Output::Cas { succeeded: false, rev: 2, seen: Some((1, 2)) },
            ),
            op(4, 5, Input::Revoke { lease: 77 }, Output::Revoke { rev: 3 }),
            op(6, 7, Input::Cas { expect: None, value: 8 }, Output::Cas { succeeded: true, rev: 4, seen: None }),
            op(8, 9, Input::Revoke { lease: 77 }, Output::Revoke { rev: 4 }),
            op(10, 11, Input::Get, Output::Get { value: Some(8), mod_rev: 4 }),
        ];
        assert!(matches!(verdict(&h), Verdict::Linearizable));
        // A revoke of the value's lease must delete it.
        let mut bad = h.clone();
        bad[3].output = Output::Cas { succeeded: false, rev: 3, seen: Some((1, 2)) };
        assert!(matches!(verdict(&bad), Verdict::Illegal(_)));
    }
}
