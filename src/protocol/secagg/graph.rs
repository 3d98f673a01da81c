//! The SecAgg+ neighbour graph: who shares secrets and masks with whom.
//!
//! The owners are placed on a ring in an order drawn from a ChaCha20 stream seeded by
//! SHA3-256 of the round context, and each is linked to the degree/2 nearest on either side
//! (a Harary graph); with degree n-1 the graph is complete. The graph is public: every owner
//! and the server compute it from the parameters alone, identically. Each owner masks with,
//! and gives shares to, its neighbours only (and itself), so work per owner grows with the degree, not n.

use std::collections::BTreeMap;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha3::{Digest, Sha3_256};

const LABEL: &[u8] = b"blindfed/secagg/v1/graph";

/// Adjacency lists (ascending ids) of an undirected regular graph on the owners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graph {
    adjacency: BTreeMap<u64, Vec<u64>>,
}

impl Graph {
    /// The graph of `degree` on `owners` (distinct ids); `degree` is n-1 (complete) or an
    /// even number below it (the parameters check this).
    pub fn new(owners: &[u64], degree: usize, context: &[u8]) -> Self {
        let n = owners.len();
        let mut h = Sha3_256::new();
        h.update(LABEL);
        h.update((context.len() as u64).to_le_bytes());
        h.update(context);
        let mut rng = ChaCha20Rng::from_seed(h.finalize().into());
        let mut ring = owners.to_vec();
        ring.sort_unstable();
        // Fisher-Yates with unbiased draws.
        for i in (1..n).rev() {
            ring.swap(i, below(&mut rng, i as u64 + 1) as usize);
        }
        let adjacency = (0..n)
            .map(|p| {
                let mut adj: Vec<u64> = if degree + 1 >= n {
                    ring.iter().copied().filter(|&o| o != ring[p]).collect()
                } else {
                    (1..=degree / 2).flat_map(|j| [ring[(p + j) % n], ring[(p + n - j) % n]]).collect()
                };
                adj.sort_unstable();
                (ring[p], adj)
            })
            .collect();
        Graph { adjacency }
    }

    /// The neighbours of `owner`, ascending (empty for an id not in the graph).
    pub fn neighbours(&self, owner: u64) -> &[u64] {
        self.adjacency.get(&owner).map_or(&[], Vec::as_slice)
    }

    pub fn are_neighbours(&self, a: u64, b: u64) -> bool {
        self.neighbours(a).binary_search(&b).is_ok()
    }
}

/// A uniform draw from 0..n (n >= 1) by rejection.
fn below(rng: &mut ChaCha20Rng, n: u64) -> u64 {
    let zone = u64::MAX - u64::MAX % n;
    loop {
        let r = rng.next_u64();
        if r < zone {
            return r % n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_is_regular_symmetric_and_fixed_by_the_context() {
        let owners: Vec<u64> = (0..40).map(|i| 1000 + 7 * i).collect();
        for degree in [2, 4, 10, 39] {
            let g = Graph::new(&owners, degree, b"run 1 / round 3");
            for &u in &owners {
                let adj = g.neighbours(u);
                assert_eq!(adj.len(), degree, "owner {u}");
                assert!(!adj.contains(&u));
                assert!(adj.iter().all(|&v| g.are_neighbours(v, u)), "symmetric");
            }
            assert_eq!(g, Graph::new(&owners, degree, b"run 1 / round 3"));
        }
        let a = Graph::new(&owners, 4, b"round 1");
        let b = Graph::new(&owners, 4, b"round 2");
        assert_ne!(a, b, "another round, another graph");
        assert!(a.neighbours(5).is_empty());
    }
}
