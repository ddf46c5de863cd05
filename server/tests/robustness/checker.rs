//! A linearizability checker: Wing & Gong's search with Lowe's memoization
//! (the algorithm of porcupine, which etcd's robustness tests use), over a
//! model whose steps are deterministic. Callers partition histories (per key
//! for kvd's workload) and check each part on its own.
//!
//! An operation whose outcome was never seen (a timeout, a dropped
//! connection) returns at `u64::MAX`: it may take effect at any point after
//! its call, and if it never did, linearizing it after everything else is
//! equivalent, since nothing observes it there.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// The sequential specification histories are checked against.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;
    fn init() -> Self::State;
    /// The state after `input` answered `output` in `state`; None when that
    /// answer is impossible there.
    fn step(state: &Self::State, input: &Self::Input, output: &Self::Output) -> Option<Self::State>;
}

/// One operation of a history, with its invocation and response times.
#[derive(Debug, Clone)]
pub struct Operation<I, O> {
    pub client: usize,
    pub call: u64,
    /// `u64::MAX` when the response was never seen.
    pub ret: u64,
    pub input: I,
    pub output: O,
}

/// Why a history is not linearizable: the longest linearizable prefix found
/// (operation indices in linearization order) and the operations none of
/// which could come next.
#[derive(Debug)]
pub struct Violation {
    pub prefix: Vec<usize>,
    pub stuck: Vec<usize>,
}

/// What the checker concluded.
#[derive(Debug)]
pub enum Verdict {
    Linearizable,
    Illegal(Violation),
    /// The search exceeded its step budget.
    Inconclusive,
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

struct Node {
    op: usize,
    call: bool,
    /// For a call, its return node.
    ret: usize,
    prev: usize,
    next: usize,
}

/// The history's events in time order as a doubly linked list, head first.
fn event_list<I, O>(ops: &[Operation<I, O>]) -> Vec<Node> {
    let mut ev: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        ev.push((op.call, false, i));
        ev.push((op.ret.max(op.call), true, i));
    }
    // At equal times calls come first: the operations overlap (permissive).
    ev.sort_by_key(|&(t, is_ret, i)| (t, is_ret, i));
    let mut nodes = vec![Node { op: NIL, call: false, ret: NIL, prev: NIL, next: NIL }];
    let mut ret_of = vec![NIL; ops.len()];
    for (n, &(_, is_ret, op)) in ev.iter().enumerate() {
        let id = n + 1;
        nodes.push(Node {
            op,
            call: !is_ret,
            ret: NIL,
            prev: id - 1,
            next: if n + 1 < ev.len() { id + 1 } else { NIL },
        });
        if is_ret {
            ret_of[op] = id;
        }
    }
    nodes[HEAD].next = if ev.is_empty() { NIL } else { 1 };
    for n in nodes.iter_mut().skip(1) {
        if n.call {
            n.ret = ret_of[n.op];
        }
    }
    nodes
}

fn unlink(nodes: &mut [Node], n: usize) {
    let (p, x) = (nodes[n].prev, nodes[n].next);
    nodes[p].next = x;
    if x != NIL {
        nodes[x].prev = p;
    }
}

fn relink(nodes: &mut [Node], n: usize) {
    let (p, x) = (nodes[n].prev, nodes[n].next);
    nodes[p].next = n;
    if x != NIL {
        nodes[x].prev = n;
    }
}

/// Checks one partition of a history; `budget` bounds the search steps.
pub fn check<M: Model>(ops: &[Operation<M::Input, M::Output>], budget: u64) -> Verdict {
    let mut nodes = event_list(ops);
    let words = ops.len().div_ceil(64);
    let mut done = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut best: Vec<usize> = Vec::new();
    let mut state = M::init();
    let mut node = nodes[HEAD].next;
    let mut steps = 0u64;
    while nodes[HEAD].next != NIL {
        steps += 1;
        if steps > budget {
            return Verdict::Inconclusive;
        }
        if nodes[node].call {
            let op = &ops[nodes[node].op];
            if let Some(next) = M::step(&state, &op.input, &op.output) {
                let i = nodes[node].op;
                done[i / 64] |= 1 << (i % 64);
                if seen.insert((done.clone(), next.clone())) {
                    stack.push((node, std::mem::replace(&mut state, next)));
                    if stack.len() > best.len() {
                        best = stack.iter().map(|&(n, _)| nodes[n].op).collect();
                    }
                    let ret = nodes[node].ret;
                    unlink(&mut nodes, node);
                    unlink(&mut nodes, ret);
                    node = nodes[HEAD].next;
                    continue;
                }
                done[i / 64] &= !(1 << (i % 64));
            }
            node = nodes[node].next;
        } else {
            // An operation returned before any order could place it: undo the last choice.
            let Some((call, prev)) = stack.pop() else {
                return Verdict::Illegal(violation(ops, best));
            };
            state = prev;
            let i = nodes[call].op;
            done[i / 64] &= !(1 << (i % 64));
            let ret = nodes[call].ret;
            relink(&mut nodes, ret);
            relink(&mut nodes, call);
            node = nodes[call].next;
        }
    }
    Verdict::Linearizable
}

/// The operations that were pending after the longest prefix: those called
/// before the first of them returned.
fn violation<I, O>(ops: &[Operation<I, O>], prefix: Vec<usize>) -> Violation {
    let placed: HashSet<usize> = prefix.iter().copied().collect();
    let first_ret = (0..ops.len()).filter(|i| !placed.contains(i)).map(|i| ops[i].ret).min().unwrap_or(u64::MAX);
    let stuck = (0..ops.len()).filter(|i| !placed.contains(i) && ops[*i].call <= first_ret).collect();
    Violation { prefix, stuck }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A register of integers with reads and writes.
    struct Register;

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Read,
        Write(u32),
    }

    impl Model for Register {
        type State = u32;
        type Input = Op;
        type Output = u32;
        fn init() -> u32 {
            0
        }
        fn step(state: &u32, input: &Op, output: &u32) -> Option<u32> {
            match input {
                Op::Read => (output == state).then_some(*state),
                Op::Write(v) => Some(*v),
            }
        }
    }

    fn op(call: u64, ret: u64, input: Op, output: u32) -> Operation<Op, u32> {
        Operation { client: 0, call, ret, input, output }
    }

    #[test]
    fn overlapping_write_may_be_seen_or_not() {
        let h = [op(0, 10, Op::Write(1), 0), op(1, 2, Op::Read, 0), op(3, 4, Op::Read, 1)];
        assert!(matches!(check::<Register>(&h, 1 << 20), Verdict::Linearizable));
    }

    #[test]
    fn stale_read_after_a_completed_write_is_illegal() {
        let h = [op(0, 1, Op::Write(1), 0), op(2, 3, Op::Read, 0)];
        let Verdict::Illegal(v) = check::<Register>(&h, 1 << 20) else { panic!("stale read accepted") };
        assert_eq!(v.prefix, vec![0]);
        assert_eq!(v.stuck, vec![1]);
    }

    #[test]
    fn reads_may_not_go_back_in_time() {
        // Both reads overlap the write, but once one saw 1 a later one cannot see 0.
        let h = [op(0, 10, Op::Write(1), 0), op(1, 2, Op::Read, 1), op(3, 4, Op::Read, 0)];
        assert!(matches!(check::<Register>(&h, 1 << 20), Verdict::Illegal(_)));
    }

    #[test]
    fn a_write_never_answered_may_never_take_effect() {
        let h = [op(0, u64::MAX, Op::Write(1), 0), op(5, 6, Op::Read, 0), op(7, 8, Op::Read, 1)];
        assert!(matches!(check::<Register>(&h, 1 << 20), Verdict::Linearizable));
        let h = [op(0, u64::MAX, Op::Write(1), 0), op(5, 6, Op::Read, 1), op(7, 8, Op::Read, 0)];
        assert!(matches!(check::<Register>(&h, 1 << 20), Verdict::Illegal(_)));
    }

    /// A sequential run, stretched into overlapping intervals around each
    /// operation's instant, with several clients.
    fn stretched(ops: &[(Op, u64, u64)]) -> Vec<Operation<Op, u32>> {
        let mut reg = 0u32;
        ops.iter()
            .enumerate()
            .map(|(i, &(input, before, after))| {
                let at = 100 * i as u64 + 200;
                let out = match input {
                    Op::Read => reg,
                    Op::Write(v) => {
                        reg = v;
                        0
                    }
                };
                Operation { client: i % 4, call: at - before, ret: at + after, input, output: out }
            })
            .collect()
    }

    fn arb_ops() -> impl Strategy<Value = Vec<(Op, u64, u64)>> {
        let op = prop_oneof![Just(Op::Read), (1u32..6).prop_map(Op::Write)];
        proptest::collection::vec((op, 0u64..150, 0u64..150), 1..40)
    }

    proptest! {
        #[test]
        fn every_stretched_sequential_run_is_linearizable(ops in arb_ops()) {
            let h = stretched(&ops);
            prop_assert!(matches!(check::<Register>(&h, 1 << 24), Verdict::Linearizable));
        }

        #[test]
        fn a_read_of_a_value_never_written_is_caught(ops in arb_ops(), pick in any::<prop::sample::Index>()) {
            let mut h = stretched(&ops);
            let i = pick.index(h.len());
            h[i].input = Op::Read;
            h[i].output = 99;
            prop_assert!(matches!(check::<Register>(&h, 1 << 24), Verdict::Illegal(_)));
        }
    }
}
