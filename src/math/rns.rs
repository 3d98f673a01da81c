//! Fast RNS basis conversion (Bajard et al.; the approximate "FastBConv" of HPS/BEHZ).
//!
//! Converts residues of x modulo B = b_0 ... b_{k-1} to residues modulo other primes c_t:
//! x mod c_t ~ sum_i [x_i (B/b_i)^-1]_{b_i} (B/b_i) mod c_t. The result may be off by a small
//! multiple of B (at most k - 1 times B), which key switching tolerates by design.

use rayon::prelude::*;

use super::modulus::Modulus;

#[derive(Clone, Debug)]
pub struct BaseConverter {
    from: Vec<Modulus>,
    to: Vec<Modulus>,
    /// (B/b_i)^-1 mod b_i and its Shoup constant.
    inv_punctured: Vec<(u64, u64)>,
    /// punctured[t][i] = (B/b_i) mod c_t, and its Shoup constant.
    punctured: Vec<Vec<(u64, u64)>>,
    /// B mod c_t, to remove the overflow multiple in exact conversions.
    product_mod_target: Vec<u64>,
    /// 1 / b_i as f64, to estimate that multiple.
    inv_source: Vec<f64>,
    /// When several source primes multiply to less than [`SMALL_PRODUCT`] (two 30-bit primes,
    /// say): B and the integers B/b_i, so exact conversion reconstructs the integer directly.
    small_product: Option<SmallProduct>,
}

#[derive(Clone, Debug)]
struct SmallProduct {
    product: u64,
    cofactors: Vec<u64>,
}

/// Source products below this reconstruct exactly in 64-bit integers (k terms below B each,
/// summed with one conditional subtraction of B per term).
const SMALL_PRODUCT: u128 = 1 << 62;

/// Source rows prepared for exact conversion ([`BaseConverter::prepare_exact`]).
pub enum ExactRows {
    /// One source prime: its residues, centred per target.
    Single(Vec<u64>),
    /// A small source product: the centred integers themselves.
    Integers(Vec<i64>),
    /// Wider products: residues scaled by (B/b_i)^-1 and the multiples of B to subtract.
    Scaled { prepared: Vec<u64>, overflow: Vec<u64> },
}

impl BaseConverter {
    pub fn new(from: &[Modulus], to: &[Modulus]) -> Self {
        let inv_punctured = from
            .iter()
            .enumerate()
            .map(|(i, bi)| {
                let prod = from
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .fold(1u64, |acc, (_, bj)| bi.mul(acc, bi.reduce(bj.value())));
                let inv = bi.inv(prod).expect("RNS basis primes must be distinct");
                (inv, bi.shoup(inv))
            })
            .collect();
        let punctured = to
            .iter()
            .map(|ct| {
                (0..from.len())
                    .map(|i| {
                        from.iter()
                            .enumerate()
                            .filter(|&(j, _)| j != i)
                            .fold(1u64, |acc, (_, bj)| ct.mul(acc, ct.reduce(bj.value())))
                    })
                    .map(|w| (w, ct.shoup(w)))
                    .collect()
            })
            .collect();
        let product_mod_target = to
            .iter()
            .map(|ct| from.iter().fold(1u64, |acc, bi| ct.mul(acc, ct.reduce(bi.value()))))
            .collect();
        let inv_source = from.iter().map(|bi| 1.0 / bi.value() as f64).collect();
        let product: u128 =
            from.iter().try_fold(1u128, |acc, b| acc.checked_mul(b.value() as u128)).unwrap_or(u128::MAX);
        let small_product = (from.len() > 1 && product < SMALL_PRODUCT).then(|| SmallProduct {
            product: product as u64,
            cofactors: from.iter().map(|b| product as u64 / b.value()).collect(),
        });
        BaseConverter {
            from: from.to_vec(),
            to: to.to_vec(),
            inv_punctured,
            punctured,
            product_mod_target,
            inv_source,
            small_product,
        }
    }

    /// Multiplies each source row by (B/b_i)^-1 mod b_i; the result feeds [`Self::convert_row`].
    pub fn prepare(&self, input: &[u64], n: usize) -> Vec<u64> {
        debug_assert_eq!(input.len(), self.from.len() * n);
        if self.from.len() == 1 {
            // B/b_0 = 1: nothing to scale.
            return input.to_vec();
        }
        let mut scaled = vec![0u64; input.len()];
        scaled.chunks_mut(n).zip(input.chunks(n)).zip(&self.from).zip(&self.inv_punctured).for_each(
            |(((y, x), bi), &(w, ws))| {
                y.iter_mut().zip(x).for_each(|(y, &x)| *y = bi.mul_shoup(x, w, ws));
            },
        );
        scaled
    }

    /// Writes x mod c_target for each of the n coefficients, from `prepared` source rows.
    pub fn convert_row(&self, prepared: &[u64], n: usize, target: usize, out: &mut [u64]) {
        let ct = self.to[target];
        let p = &self.punctured[target];
        if p.len() == 1 {
            out.iter_mut().zip(prepared).for_each(|(o, &x)| *o = ct.reduce(x));
            return;
        }
        // Row by row with Shoup products (each in [0, 2c)): no 128-bit accumulator and no
        // 128-bit reduction per coefficient. The sum is kept in [0, 2c) between rows.
        let two_c = 2 * ct.value();
        let (w, ws) = p[0];
        out.iter_mut().zip(&prepared[..n]).for_each(|(o, &x)| *o = ct.mul_shoup_lazy(x, w, ws));
        for (row, &(w, ws)) in prepared.chunks(n).zip(p).skip(1) {
            out.iter_mut().zip(row).for_each(|(o, &x)| {
                let t = *o + ct.mul_shoup_lazy(x, w, ws);
                *o = t.min(t.wrapping_sub(two_c));
            });
        }
        out.iter_mut().for_each(|o| *o = ct.reduce_once(*o));
    }

    /// Source rows (k x n, coefficient form) ready for [`Self::convert_row_exact`]: the work
    /// that does not depend on the target, done once.
    pub fn prepare_exact(&self, input: &[u64], n: usize) -> ExactRows {
        debug_assert_eq!(input.len(), self.from.len() * n);
        if self.from.len() == 1 {
            return ExactRows::Single(input.to_vec());
        }
        let prepared = self.prepare(input, n);
        match &self.small_product {
            Some(SmallProduct { product: big_b, cofactors }) => {
                let big_b = *big_b;
                // x = sum_i y_i (B/b_i) mod B in exact 64-bit integer arithmetic (each term is
                // below B < 2^62), then centred: one integer per coefficient for every target.
                let mut x = vec![0u64; n];
                for (row, &cofactor) in prepared.chunks(n).zip(cofactors) {
                    x.iter_mut().zip(row).for_each(|(acc, &y)| {
                        let t = *acc + y * cofactor;
                        *acc = t.min(t.wrapping_sub(big_b));
                    });
                }
                let half = big_b / 2;
                ExactRows::Integers(
                    x.into_iter()
                        .map(|r| if r > half { r as i64 - big_b as i64 } else { r as i64 })
                        .collect(),
                )
            }
            None => {
                let overflow = self.overflow_estimates(&prepared, n);
                ExactRows::Scaled { prepared, overflow }
            }
        }
    }

    /// Per coefficient, v = round(sum_i y_i / b_i), the number of times B must be subtracted
    /// from the fast conversion to land on the representative of x in [-B/2, B/2).
    /// (Shenoy-Kumaresan style floating-point correction, as in HPS; an error in the estimate
    /// needs x within about 2^-40 B of B/2 and then costs at most one B.)
    fn overflow_estimates(&self, prepared: &[u64], n: usize) -> Vec<u64> {
        (0..n)
            .map(|j| {
                let sum: f64 = self
                    .inv_source
                    .iter()
                    .enumerate()
                    .map(|(i, &inv)| prepared[i * n + j] as f64 * inv)
                    .sum();
                sum.round() as u64
            })
            .collect()
    }

    /// The centred representative of x mod c_target (x in [-B/2, B/2)), for each of the n
    /// coefficients of `rows`.
    pub fn convert_row_exact(&self, rows: &ExactRows, target: usize, out: &mut [u64]) {
        let ct = self.to[target];
        match rows {
            ExactRows::Single(residues) => {
                let b0 = self.from[0].value();
                let (half, b0_mod) = (b0 >> 1, ct.reduce(b0));
                // x > b0/2 stands for x - b0. Subtracting b0 is adding c - (b0 mod c), masked
                // in without a branch (the sign of x - b0/2 is random: a branch would
                // mispredict every other time).
                let shift = ct.value() - b0_mod;
                if b0 <= 2 * ct.value() {
                    // Primes of similar size: one conditional subtraction reduces x.
                    for (o, &x) in out.iter_mut().zip(residues) {
                        let above = 0u64.wrapping_sub((x > half) as u64);
                        *o = ct.reduce_once(ct.reduce_once(x) + (shift & above));
                    }
                } else {
                    for (o, &x) in out.iter_mut().zip(residues) {
                        let above = 0u64.wrapping_sub((x > half) as u64);
                        *o = ct.reduce_once(ct.reduce(x) + (shift & above));
                    }
                }
            }
            ExactRows::Integers(x) => {
                // |x| < 2^61: adding a multiple of c of at least 2^61 makes it non-negative
                // (and below 2^63) without a branch.
                let c = ct.value();
                let lift = (1u64 << 61).div_ceil(c) * c;
                for (o, &x) in out.iter_mut().zip(x) {
                    *o = ct.reduce(x.wrapping_add(lift as i64) as u64);
                }
            }
            ExactRows::Scaled { prepared, overflow } => {
                self.convert_row(prepared, out.len(), target, out);
                let b = self.product_mod_target[target];
                let bs = ct.shoup(b);
                // v <= k, the number of source primes, is already below c_t.
                debug_assert!(overflow.iter().all(|&v| v < ct.value()));
                for (o, &v) in out.iter_mut().zip(overflow) {
                    *o = ct.sub(*o, ct.mul_shoup(v, b, bs));
                }
            }
        }
    }

    /// Converts k source rows (coefficient form) to every target prime, one row each.
    pub fn convert(&self, input: &[u64], n: usize) -> Vec<u64> {
        let prepared = self.prepare(input, n);
        let mut output = vec![0u64; self.to.len() * n];
        output.par_chunks_mut(n).enumerate().for_each(|(t, out)| self.convert_row(&prepared, n, t, out));
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::primes::{ntt_primes, Side};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn conversion_is_exact_up_to_small_multiple_of_source_product(
            x in any::<u64>(), y in any::<u64>(), k in 1usize..4
        ) {
            let primes = ntt_primes(30, k + 1, 8, Side::Below, &[]);
            let from: Vec<Modulus> = primes[..k].iter().map(|&q| Modulus::new(q)).collect();
            let to = vec![Modulus::new(primes[k])];
            let big_b: u128 = from.iter().map(|m| m.value() as u128).product();
            let value = (((x as u128) << 64) | y as u128) % big_b;
            let input: Vec<u64> = from.iter().map(|m| (value % m.value() as u128) as u64).collect();
            let out = BaseConverter::new(&from, &to).convert(&input, 1);
            let c = to[0].value() as u128;
            let ok = (0..k as u128).any(|u| (value + u * big_b) % c == out[0] as u128);
            prop_assert!(ok);
            // The exact conversion gives the centred representative, for narrow and wide
            // targets alike (one source prime, a small product, a wide one).
            let wide = ntt_primes(60, 1, 8, Side::Below, &primes)[0];
            let to = vec![to[0], Modulus::new(wide)];
            let conv = BaseConverter::new(&from, &to);
            let rows = conv.prepare_exact(&input, 1);
            for (t, ct) in to.iter().enumerate() {
                let c = ct.value() as u128;
                let mut exact = [0u64];
                conv.convert_row_exact(&rows, t, &mut exact);
                let centred =
                    if value >= big_b.div_ceil(2) { (c - (big_b - value) % c) % c } else { value % c };
                prop_assert_eq!(exact[0] as u128, centred);
            }
        }
    }
}
