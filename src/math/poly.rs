//! Polynomials in RNS form: one row of N residues per prime, stored in one flat buffer.
//!
//! A polynomial does not own its basis; operations take the moduli (or NTT tables) of its rows,
//! so the same type serves ciphertexts at every level and the extended key-switching basis.

use rayon::prelude::*;
use zeroize::Zeroize;

use super::modulus::Modulus;
use super::ntt::NttTable;

/// Below this many coefficients in total, rayon's fork-join costs more than it saves.
const PARALLEL_THRESHOLD: usize = 1 << 14;

#[derive(Clone, Debug, PartialEq, Eq, Zeroize)]
pub struct RnsPoly {
    n: usize,
    data: Vec<u64>,
}

impl RnsPoly {
    pub fn zero(n: usize, limbs: usize) -> Self {
        RnsPoly { n, data: vec![0; n * limbs] }
    }

    /// Wraps a flat buffer of `limbs * n` residues.
    pub fn from_flat(n: usize, data: Vec<u64>) -> Self {
        assert!(n > 0 && data.len().is_multiple_of(n));
        RnsPoly { n, data }
    }

    pub fn degree(&self) -> usize {
        self.n
    }

    pub fn limbs(&self) -> usize {
        self.data.len() / self.n
    }

    pub fn limb(&self, i: usize) -> &[u64] {
        &self.data[i * self.n..(i + 1) * self.n]
    }

    pub fn limb_mut(&mut self, i: usize) -> &mut [u64] {
        &mut self.data[i * self.n..(i + 1) * self.n]
    }

    pub fn as_flat(&self) -> &[u64] {
        &self.data
    }

    pub fn as_flat_mut(&mut self) -> &mut [u64] {
        &mut self.data
    }

    pub fn rows(&self) -> std::slice::ChunksExact<'_, u64> {
        self.data.chunks_exact(self.n)
    }

    pub fn rows_mut(&mut self) -> std::slice::ChunksExactMut<'_, u64> {
        self.data.chunks_exact_mut(self.n)
    }

    /// Keeps the first `limbs` rows.
    pub fn truncate(&mut self, limbs: usize) {
        self.data.truncate(limbs * self.n);
    }

    /// Appends one row.
    pub fn push_limb(&mut self, row: &[u64]) {
        assert_eq!(row.len(), self.n);
        self.data.extend_from_slice(row);
    }

    /// A copy of the given rows, in the given order.
    pub fn select_limbs(&self, rows: &[usize]) -> RnsPoly {
        let mut data = Vec::with_capacity(rows.len() * self.n);
        for &r in rows {
            data.extend_from_slice(self.limb(r));
        }
        RnsPoly { n: self.n, data }
    }

    /// A copy of rows [start, end).
    pub fn slice_limbs(&self, start: usize, end: usize) -> RnsPoly {
        RnsPoly { n: self.n, data: self.data[start * self.n..end * self.n].to_vec() }
    }

    /// Applies `f(row_index, row)` to every row, in parallel when the polynomial is large.
    pub fn for_each_row<F>(&mut self, f: F)
    where
        F: Fn(usize, &mut [u64]) + Sync + Send,
    {
        let n = self.n;
        if self.data.len() >= PARALLEL_THRESHOLD && rayon::current_num_threads() > 1 {
            self.data.par_chunks_mut(n).enumerate().for_each(|(i, row)| f(i, row));
        } else {
            self.data.chunks_mut(n).enumerate().for_each(|(i, row)| f(i, row));
        }
    }

    /// Applies `f(row_index, row, other_row)` to paired rows of `self` and `other`.
    pub fn zip_rows<F>(&mut self, other: &RnsPoly, f: F)
    where
        F: Fn(usize, &mut [u64], &[u64]) + Sync + Send,
    {
        let n = self.n;
        let rows = self.limbs().min(other.limbs());
        let (mine, theirs) = (&mut self.data[..rows * n], &other.data[..rows * n]);
        if mine.len() >= PARALLEL_THRESHOLD && rayon::current_num_threads() > 1 {
            mine.par_chunks_mut(n).zip(theirs.par_chunks(n)).enumerate().for_each(|(i, (a, b))| f(i, a, b));
        } else {
            mine.chunks_mut(n).zip(theirs.chunks(n)).enumerate().for_each(|(i, (a, b))| f(i, a, b));
        }
    }

    pub fn ntt(&mut self, tables: &[&NttTable]) {
        self.for_each_row(|i, row| tables[i].forward(row));
    }

    pub fn intt(&mut self, tables: &[&NttTable]) {
        self.for_each_row(|i, row| tables[i].inverse(row));
    }

    pub fn add_assign(&mut self, other: &RnsPoly, moduli: &[Modulus]) {
        self.zip_rows(other, |i, a, b| {
            let m = moduli[i];
            a.iter_mut().zip(b).for_each(|(x, &y)| *x = m.add(*x, y));
        });
    }

    pub fn sub_assign(&mut self, other: &RnsPoly, moduli: &[Modulus]) {
        self.zip_rows(other, |i, a, b| {
            let m = moduli[i];
            a.iter_mut().zip(b).for_each(|(x, &y)| *x = m.sub(*x, y));
        });
    }

    pub fn neg_assign(&mut self, moduli: &[Modulus]) {
        self.for_each_row(|i, row| {
            let m = moduli[i];
            row.iter_mut().for_each(|x| *x = m.neg(*x));
        });
    }

    /// Pointwise product (both operands in NTT form).
    pub fn mul_assign(&mut self, other: &RnsPoly, moduli: &[Modulus]) {
        self.zip_rows(other, |i, a, b| {
            let m = moduli[i];
            a.iter_mut().zip(b).for_each(|(x, &y)| *x = m.mul(*x, y));
        });
    }

    /// floor(w 2^64 / q) of every residue w: the companion that makes products by this
    /// polynomial two word products per residue ([`RnsPoly::mul_shoup_assign`]).
    pub fn shoup_form(&self, moduli: &[Modulus]) -> RnsPoly {
        let mut out = self.clone();
        out.for_each_row(|i, row| {
            let m = moduli[i];
            row.iter_mut().for_each(|x| *x = m.shoup(*x));
        });
        out
    }

    /// self *= w pointwise, given `w_shoup = w.shoup_form(moduli)`.
    pub fn mul_shoup_assign(&mut self, w: &RnsPoly, w_shoup: &RnsPoly, moduli: &[Modulus]) {
        self.zip_rows(w, |i, a, w| {
            let m = moduli[i];
            for ((x, &w), &ws) in a.iter_mut().zip(w).zip(w_shoup.limb(i)) {
                *x = m.mul_shoup(*x, w, ws);
            }
        });
    }

    /// self += a * b pointwise.
    pub fn add_product(&mut self, a: &RnsPoly, b: &RnsPoly, moduli: &[Modulus]) {
        let n = self.n;
        self.for_each_row(|i, row| {
            let m = moduli[i];
            let (ra, rb) = (&a.data[i * n..(i + 1) * n], &b.data[i * n..(i + 1) * n]);
            for ((x, &y), &z) in row.iter_mut().zip(ra).zip(rb) {
                *x = m.reduce_u128(*x as u128 + y as u128 * z as u128);
            }
        });
    }

    /// Multiplies row i by the constant c[i].
    pub fn mul_scalar_per_row(&mut self, c: &[u64], moduli: &[Modulus]) {
        self.for_each_row(|i, row| {
            let m = moduli[i];
            let (w, ws) = (c[i], m.shoup(c[i]));
            row.iter_mut().for_each(|x| *x = m.mul_shoup(*x, w, ws));
        });
    }

    /// Builds an RNS polynomial from small signed coefficients (coefficient form).
    pub fn from_signed(coeffs: &[i64], moduli: &[Modulus]) -> Self {
        let n = coeffs.len();
        let mut p = RnsPoly::zero(n, moduli.len());
        p.for_each_row(|i, row| {
            let m = moduli[i];
            row.iter_mut().zip(coeffs).for_each(|(x, &c)| *x = m.reduce_i64(c));
        });
        p
    }

    /// Applies the automorphism X -> X^g to a polynomial in NTT form, given the index map
    /// from [`ntt_permutation`](crate::math::automorphism::ntt_permutation).
    pub fn permute_ntt(&self, perm: &[usize]) -> RnsPoly {
        let mut out = RnsPoly::zero(self.n, self.limbs());
        let n = self.n;
        out.for_each_row(|i, row| {
            let src = &self.data[i * n..(i + 1) * n];
            row.iter_mut().zip(perm).for_each(|(x, &j)| *x = src[j]);
        });
        out
    }
}
