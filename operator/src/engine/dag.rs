//! The step graph: name lookup, topological order, transitive upstream sets, and cycle detection.

use std::collections::{BTreeSet, HashMap};

use crate::api::Step;

/// The dependency graph of a flow's steps (indices into `spec.steps`).
#[derive(Debug, Clone)]
pub struct Dag {
    /// Step index by name (the first step of a duplicated name).
    pub index: HashMap<String, usize>,
    /// Direct dependencies of each step (known names only, duplicates removed).
    pub deps: Vec<Vec<usize>>,
    /// Steps in an order where every step comes after its dependencies; steps on a cycle are left out.
    pub order: Vec<usize>,
    /// Transitive dependencies of each step.
    pub upstream: Vec<BTreeSet<usize>>,
    /// Cycles found, each as the list of step indices along it.
    pub cycles: Vec<Vec<usize>>,
}

impl Dag {
    /// Builds the graph; unknown dependencies are ignored here (validation reports them).
    pub fn new(steps: &[Step]) -> Self {
        let mut index = HashMap::new();
        for (i, s) in steps.iter().enumerate() {
            index.entry(s.name.clone()).or_insert(i);
        }
        let deps: Vec<Vec<usize>> = steps
            .iter()
            .map(|s| {
                let mut d: Vec<usize> = s
                    .depends_on
                    .iter()
                    .filter_map(|n| index.get(n).copied())
                    .collect();
                d.sort_unstable();
                d.dedup();
                d
            })
            .collect();

        // Kahn's algorithm, taking the lowest index first so the order is stable and follows the spec.
        let n = steps.len();
        let mut remaining: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut dependents = vec![Vec::new(); n];
        for (i, d) in deps.iter().enumerate() {
            for &j in d {
                dependents[j].push(i);
            }
        }
        let mut ready: BTreeSet<usize> = (0..n).filter(|&i| remaining[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &k in &dependents[i] {
                remaining[k] -= 1;
                if remaining[k] == 0 {
                    ready.insert(k);
                }
            }
        }

        let mut upstream = vec![BTreeSet::new(); n];
        for &i in &order {
            let mut up = BTreeSet::new();
            for &j in &deps[i] {
                up.insert(j);
                up.extend(upstream[j].iter().copied());
            }
            upstream[i] = up;
        }

        let cycles = if order.len() < n {
            find_cycles(&deps, &order)
        } else {
            Vec::new()
        };
        Self {
            index,
            deps,
            order,
            upstream,
            cycles,
        }
    }

    /// Whether the graph has no cycle.
    pub fn is_acyclic(&self) -> bool {
        self.cycles.is_empty()
    }
}

/// Finds one cycle through each strongly tangled part of the graph (the steps Kahn's algorithm could not order).
fn find_cycles(deps: &[Vec<usize>], ordered: &[usize]) -> Vec<Vec<usize>> {
    let n = deps.len();
    let mut done = vec![false; n];
    for &i in ordered {
        done[i] = true;
    }
    let mut cycles = Vec::new();
    let mut on_cycle = vec![false; n];
    for start in 0..n {
        if done[start] || on_cycle[start] {
            continue;
        }
        // Walk dependencies among unordered steps until a step repeats: every unordered step has an unordered
        // dependency, so the walk always closes a cycle.
        let mut path = vec![start];
        let mut seen_at = HashMap::from([(start, 0usize)]);
        let mut cur = start;
        while let Some(&next) = deps[cur].iter().find(|&&d| !done[d]) {
            if let Some(&pos) = seen_at.get(&next) {
                let cycle: Vec<usize> = path[pos..].to_vec();
                if !cycle.iter().any(|&c| on_cycle[c]) {
                    for &c in &cycle {
                        on_cycle[c] = true;
                    }
                    cycles.push(cycle);
                }
                break;
            }
            seen_at.insert(next, path.len());
            path.push(next);
            cur = next;
        }
        for p in path {
            done[p] = true;
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(spec: &[(&str, &[&str])]) -> Vec<Step> {
        spec.iter()
            .map(|(n, d)| Step {
                name: (*n).into(),
                depends_on: d.iter().map(|s| (*s).into()).collect(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn orders_and_computes_upstream() {
        let s = steps(&[("d", &["b", "c"]), ("b", &["a"]), ("c", &["a"]), ("a", &[])]);
        let dag = Dag::new(&s);
        assert!(dag.is_acyclic());
        let names: Vec<_> = dag.order.iter().map(|&i| s[i].name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        assert_eq!(dag.upstream[0], BTreeSet::from([1, 2, 3]));
        assert!(dag.upstream[3].is_empty());
    }

    #[test]
    fn finds_cycles() {
        let s = steps(&[
            ("a", &["c"]),
            ("b", &["a"]),
            ("c", &["b"]),
            ("d", &["d"]),
            ("e", &["a"]),
            ("f", &[]),
        ]);
        let dag = Dag::new(&s);
        assert_eq!(dag.cycles.len(), 2, "{:?}", dag.cycles);
        let mut lens: Vec<_> = dag.cycles.iter().map(Vec::len).collect();
        lens.sort();
        assert_eq!(lens, [1, 3]);
        assert_eq!(dag.order, [5]);
    }
}
