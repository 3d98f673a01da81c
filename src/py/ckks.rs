//! Python classes over the CKKS engine: parameters, keys, plaintexts and ciphertexts.

use std::sync::Arc;

use crate::error::Error;
use numpy::{Complex64, PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use zeroize::Zeroize;

use crate::ckks::serial::{parameters_from_bytes, parameters_to_bytes};
use crate::ckks::{
    evaluator as ev, Ciphertext, Complex, Context, EvaluationKeys, GaloisKeys, ParameterSpec, Plaintext,
    PublicKey, RelinKey, SecretDistribution, SecretKey,
};
use crate::he::layout::TokenLayout;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyParameters>()?;
    m.add_class::<PySecretKey>()?;
    m.add_class::<PyPublicKey>()?;
    m.add_class::<PyRelinKey>()?;
    m.add_class::<PyGaloisKeys>()?;
    m.add_class::<PyEvaluationKeys>()?;
    m.add_class::<PyPlaintext>()?;
    m.add_class::<PyCiphertext>()?;
    Ok(())
}

/// Slot values from Python: a real or complex 1-D numpy array, or a list of floats.
#[derive(FromPyObject)]
enum Values<'py> {
    Real(PyReadonlyArray1<'py, f64>),
    Complex(PyReadonlyArray1<'py, Complex64>),
    List(Vec<f64>),
}

impl Values<'_> {
    fn to_complex(&self) -> PyResult<Vec<Complex>> {
        Ok(match self {
            Values::Real(a) => a.as_array().iter().map(|&x| Complex::new(x, 0.0)).collect(),
            Values::Complex(a) => a.as_array().iter().map(|z| Complex::new(z.re, z.im)).collect(),
            Values::List(v) => v.iter().map(|&x| Complex::new(x, 0.0)).collect(),
        })
    }
}

/// What `encrypt` accepts: values to encode, or a plaintext encoded beforehand.
#[derive(FromPyObject)]
enum Message<'py> {
    Plain(PyRef<'py, PyPlaintext>),
    Values(Values<'py>),
}

impl Message<'_> {
    fn into_plaintext(self, ctx: &Context, level: Option<usize>, scale: Option<f64>) -> PyResult<Plaintext> {
        match self {
            Message::Plain(p) if level.is_none() && scale.is_none() => Ok(p.pt.clone()),
            Message::Plain(_) => {
                Err(Error::InvalidInput("level and scale apply only when encoding values".into()).into())
            }
            Message::Values(v) => encode(ctx, &v, level, scale),
        }
    }
}

fn to_numpy<'py>(py: Python<'py>, values: Vec<Complex>, complex: bool) -> Bound<'py, PyAny> {
    if complex {
        PyArray1::from_vec(py, values.into_iter().map(|z| Complex64::new(z.re, z.im)).collect()).into_any()
    } else {
        PyArray1::from_vec(py, values.into_iter().map(|z| z.re).collect()).into_any()
    }
}

fn secret_distribution(hamming_weight: Option<usize>) -> SecretDistribution {
    hamming_weight.map_or(SecretDistribution::Ternary, SecretDistribution::HammingWeight)
}

/// A CKKS parameter set: ring degree, modulus chain and key-switching primes, checked
/// against the HE Standard's 128-bit bound.
#[pyclass(name = "Parameters", module = "blindfed.ckks", frozen)]
#[derive(Clone)]
pub struct PyParameters {
    pub(crate) ctx: Context,
}

#[pymethods]
impl PyParameters {
    #[new]
    #[pyo3(signature = (log_n, levels, scale_bits=40, *, first_bits=60, special_bits=60, special_count=None, hamming_weight=None, insecure=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        log_n: u32,
        levels: usize,
        scale_bits: u32,
        first_bits: u32,
        special_bits: u32,
        special_count: Option<usize>,
        hamming_weight: Option<usize>,
        insecure: bool,
    ) -> PyResult<Self> {
        let spec = ParameterSpec {
            log_n,
            levels,
            scale_bits,
            first_bits,
            special_bits,
            special_count,
            secret: secret_distribution(hamming_weight),
            insecure,
        };
        let ctx = py.detach(|| Context::new(&spec))?;
        Ok(PyParameters { ctx })
    }

    /// Ring degree N.
    #[getter]
    fn ring_degree(&self) -> usize {
        self.ctx.degree()
    }

    /// Number of complex slots, N/2.
    #[getter]
    fn slots(&self) -> usize {
        self.ctx.params.slots()
    }

    /// Highest level: the number of rescalings a fresh ciphertext allows.
    #[getter]
    fn max_level(&self) -> usize {
        self.ctx.max_level()
    }

    #[getter]
    fn scale_bits(&self) -> u32 {
        self.ctx.params.scale_bits
    }

    /// Ciphertext primes q_0..q_L.
    #[getter]
    fn moduli(&self) -> Vec<u64> {
        self.ctx.params.q.clone()
    }

    /// Key-switching (special) primes.
    #[getter]
    fn special_moduli(&self) -> Vec<u64> {
        self.ctx.params.p.clone()
    }

    /// Number of key-switching digits (consecutive chain primes up to the special primes'
    /// product each).
    #[getter]
    fn dnum(&self) -> usize {
        self.ctx.params.dnum()
    }

    #[getter]
    fn log_q(&self) -> f64 {
        self.ctx.params.log_q()
    }

    #[getter]
    fn log_qp(&self) -> f64 {
        self.ctx.params.log_qp()
    }

    /// Samples of `tokens` tokens one ciphertext group holds (the token layout's rule).
    fn samples_per_group(&self, tokens: usize) -> PyResult<usize> {
        Ok(TokenLayout::new(tokens, 1, self.ctx.params.slots())?.samples_per_group())
    }

    /// Whether the set is within the HE Standard's 128-bit bound.
    #[getter]
    fn is_secure(&self) -> bool {
        self.ctx.params.is_128_bit_secure()
    }

    #[getter]
    fn fingerprint<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.ctx.fingerprint)
    }

    /// The canonical scale of fresh ciphertexts at `level` (default: the top level).
    #[pyo3(signature = (level=None))]
    fn scale_at(&self, level: Option<usize>) -> PyResult<f64> {
        let level = level.unwrap_or(self.ctx.max_level());
        if level > self.ctx.max_level() {
            return Err(Error::OutOfRange(format!(
                "level {level} exceeds the maximum {}",
                self.ctx.max_level()
            ))
            .into());
        }
        Ok(self.ctx.scale_at(level))
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &parameters_to_bytes(&self.ctx.params))
    }

    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let ctx = py.detach(|| parameters_from_bytes(data).and_then(Context::from_parameters))?;
        Ok(PyParameters { ctx })
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<PyParameters>().is_ok_and(|o| o.get().ctx == self.ctx)
    }

    fn __hash__(&self) -> u64 {
        u64::from_le_bytes(self.ctx.fingerprint[..8].try_into().unwrap())
    }

    fn __repr__(&self) -> String {
        let p = &self.ctx.params;
        format!(
            "Parameters(log_n={}, levels={}, scale_bits={}, log_qp={:.1}, dnum={}, secure={})",
            p.log_n,
            p.max_level(),
            p.scale_bits,
            p.log_qp(),
            p.dnum(),
            if p.is_128_bit_secure() { "True" } else { "False" }
        )
    }
}

/// An owner's secret key. It never leaves the process: it has no serialisation, and its
/// memory is zeroised when the object is freed.
#[pyclass(name = "SecretKey", module = "blindfed.ckks", frozen)]
pub struct PySecretKey {
    pub(crate) key: Arc<SecretKey>,
}

fn encode(
    ctx: &Context,
    values: &Values<'_>,
    level: Option<usize>,
    scale: Option<f64>,
) -> PyResult<Plaintext> {
    Ok(Plaintext::encode(ctx, &values.to_complex()?, level, scale)?)
}

#[pymethods]
impl PySecretKey {
    /// Samples a fresh secret key with the operating system's CSPRNG, or expands a 32-byte
    /// ``seed`` (as secret as the key itself) into one.
    #[staticmethod]
    #[pyo3(signature = (params, *, seed=None))]
    fn generate(py: Python<'_>, params: &PyParameters, seed: Option<&[u8]>) -> PyResult<Self> {
        let ctx = params.ctx.clone();
        let key = match seed {
            None => py.detach(|| SecretKey::generate(&ctx)),
            Some(bytes) => {
                let mut seed: [u8; 32] = bytes.try_into().map_err(|_| {
                    PyErr::from(Error::Shape(format!("seed must be 32 bytes, got {}", bytes.len())))
                })?;
                let key = py.detach(|| SecretKey::from_seed(&ctx, seed));
                seed.zeroize();
                key
            }
        };
        Ok(PySecretKey { key: Arc::new(key) })
    }

    #[getter]
    fn parameters(&self) -> PyParameters {
        PyParameters { ctx: self.key.context().clone() }
    }

    fn public_key(&self, py: Python<'_>) -> PyPublicKey {
        PyPublicKey { key: Arc::new(py.detach(|| self.key.public_key())) }
    }

    fn relin_key(&self, py: Python<'_>) -> PyRelinKey {
        PyRelinKey { key: Arc::new(py.detach(|| self.key.relin_key())) }
    }

    /// Galois keys for left rotations by `steps` (negative: right) and, optionally,
    /// conjugation.
    #[pyo3(signature = (steps, conjugate=false))]
    fn galois_keys(&self, py: Python<'_>, steps: Vec<i64>, conjugate: bool) -> PyResult<PyGaloisKeys> {
        let keys = py.detach(|| self.key.galois_keys(&steps, conjugate))?;
        Ok(PyGaloisKeys { keys: Arc::new(keys) })
    }

    /// Everything an evaluator needs, in one shippable bundle.
    #[pyo3(signature = (rotations=Vec::new(), conjugate=false, relinearize=true))]
    fn evaluation_keys(
        &self,
        py: Python<'_>,
        rotations: Vec<i64>,
        conjugate: bool,
        relinearize: bool,
    ) -> PyResult<PyEvaluationKeys> {
        let public = self.public_key(py);
        let relin = relinearize.then(|| self.relin_key(py));
        let galois = if rotations.is_empty() && !conjugate {
            None
        } else {
            Some(self.galois_keys(py, rotations, conjugate)?)
        };
        let keys = EvaluationKeys::new(
            self.key.context(),
            Some(public.key),
            relin.map(|r| r.key),
            galois.map(|g| g.keys),
        )?;
        Ok(PyEvaluationKeys { keys: Arc::new(keys) })
    }

    /// Encrypts up to N/2 values (or a plaintext) with the secret key. The ciphertext is
    /// seeded: it serialises at about half size.
    #[pyo3(signature = (values, *, level=None, scale=None))]
    fn encrypt(
        &self,
        py: Python<'_>,
        values: Message<'_>,
        level: Option<usize>,
        scale: Option<f64>,
    ) -> PyResult<PyCiphertext> {
        let pt = values.into_plaintext(self.key.context(), level, scale)?;
        let ct = py.detach(|| self.key.encrypt_symmetric(&pt))?;
        Ok(PyCiphertext { ct, keys: None })
    }

    /// Decrypts without decoding.
    fn decrypt_plaintext(&self, py: Python<'_>, ciphertext: &PyCiphertext) -> PyResult<PyPlaintext> {
        let ct = &ciphertext.ct;
        Ok(PyPlaintext { pt: py.detach(|| self.key.decrypt(ct))? })
    }

    /// Decrypts and decodes: real parts as float64, or complex128 with `complex=True`.
    #[pyo3(signature = (ciphertext, *, complex=false))]
    fn decrypt<'py>(
        &self,
        py: Python<'py>,
        ciphertext: &PyCiphertext,
        complex: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let values = py.detach(|| self.key.decrypt(&ciphertext.ct).map(|pt| pt.decode()))?;
        Ok(to_numpy(py, values, complex))
    }

    fn __repr__(&self) -> String {
        "SecretKey(<redacted>)".into()
    }
}

macro_rules! key_class {
    ($py_name:ident, $name:literal, $inner:ty, $field:ident, $doc:literal, { $($extra:tt)* }) => {
        #[doc = $doc]
        #[pyclass(name = $name, module = "blindfed.ckks", frozen)]
        pub struct $py_name {
            $field: Arc<$inner>,
        }

        #[pymethods]
        impl $py_name {
            fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
                let bytes = py.detach(|| self.$field.to_bytes());
                PyBytes::new(py, &bytes)
            }

            #[staticmethod]
            fn from_bytes(py: Python<'_>, params: &PyParameters, data: &[u8]) -> PyResult<Self> {
                let ctx = params.ctx.clone();
                Ok($py_name { $field: Arc::new(py.detach(|| <$inner>::from_bytes(&ctx, data))?) })
            }

            #[getter]
            fn parameters(&self) -> PyParameters {
                PyParameters { ctx: self.$field.context().clone() }
            }

            $($extra)*
        }
    };
}

key_class!(PyPublicKey, "PublicKey", PublicKey, key, "The public encryption key.", {
    /// Encrypts up to N/2 values (or a plaintext) with the public key.
    #[pyo3(signature = (values, *, level=None, scale=None))]
    fn encrypt(
        &self,
        py: Python<'_>,
        values: Message<'_>,
        level: Option<usize>,
        scale: Option<f64>,
    ) -> PyResult<PyCiphertext> {
        let pt = values.into_plaintext(self.key.context(), level, scale)?;
        Ok(PyCiphertext { ct: py.detach(|| self.key.encrypt(&pt))?, keys: None })
    }
});
key_class!(PyRelinKey, "RelinKey", RelinKey, key, "The relinearisation key.", {});
key_class!(PyGaloisKeys, "GaloisKeys", GaloisKeys, keys, "Rotation and conjugation keys.", {
    /// The Galois elements that have a key.
    #[getter]
    fn elements(&self) -> Vec<u64> {
        self.keys.elements()
    }
});

/// The public key, relinearisation key and Galois keys an owner ships to an evaluator.
#[pyclass(name = "EvaluationKeys", module = "blindfed.ckks", frozen)]
#[derive(Clone)]
pub struct PyEvaluationKeys {
    pub(crate) keys: Arc<EvaluationKeys>,
}

#[pymethods]
impl PyEvaluationKeys {
    #[new]
    #[pyo3(signature = (public_key=None, relin_key=None, galois_keys=None))]
    fn new(
        public_key: Option<&PyPublicKey>,
        relin_key: Option<&PyRelinKey>,
        galois_keys: Option<&PyGaloisKeys>,
    ) -> PyResult<Self> {
        let ctx = public_key
            .map(|k| k.key.context())
            .or(relin_key.map(|k| k.key.context()))
            .or(galois_keys.map(|k| k.keys.context()))
            .ok_or_else(|| Error::MissingKey("an evaluation-key bundle needs at least one key".into()))?;
        let keys = EvaluationKeys::new(
            ctx,
            public_key.map(|k| k.key.clone()),
            relin_key.map(|k| k.key.clone()),
            galois_keys.map(|k| k.keys.clone()),
        )?;
        Ok(PyEvaluationKeys { keys: Arc::new(keys) })
    }

    #[getter]
    fn public_key(&self) -> Option<PyPublicKey> {
        self.keys.public.clone().map(|key| PyPublicKey { key })
    }

    #[getter]
    fn relin_key(&self) -> Option<PyRelinKey> {
        self.keys.relin.clone().map(|key| PyRelinKey { key })
    }

    #[getter]
    fn galois_keys(&self) -> Option<PyGaloisKeys> {
        self.keys.galois.clone().map(|keys| PyGaloisKeys { keys })
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let bytes = py.detach(|| self.keys.to_bytes());
        PyBytes::new(py, &bytes)
    }

    #[staticmethod]
    fn from_bytes(py: Python<'_>, params: &PyParameters, data: &[u8]) -> PyResult<Self> {
        let ctx = params.ctx.clone();
        let keys = py.detach(|| EvaluationKeys::from_bytes(&ctx, data))?;
        Ok(PyEvaluationKeys { keys: Arc::new(keys) })
    }

    /// Encrypts with the bundle's public key; the ciphertext is bound to this bundle.
    #[pyo3(signature = (values, *, level=None, scale=None))]
    fn encrypt(
        &self,
        py: Python<'_>,
        values: Message<'_>,
        level: Option<usize>,
        scale: Option<f64>,
    ) -> PyResult<PyCiphertext> {
        let key = self
            .keys
            .public
            .as_ref()
            .ok_or_else(|| Error::MissingKey("the bundle has no public key".into()))?;
        let pt = values.into_plaintext(key.context(), level, scale)?;
        Ok(PyCiphertext { ct: py.detach(|| key.encrypt(&pt))?, keys: Some(self.clone()) })
    }

    fn __repr__(&self) -> String {
        format!(
            "EvaluationKeys(public_key={}, relin_key={}, galois_elements={:?})",
            self.keys.public.is_some(),
            self.keys.relin.is_some(),
            self.keys.galois.as_ref().map(|g| g.elements()).unwrap_or_default()
        )
    }
}

/// An encoded (unencrypted) message.
#[pyclass(name = "Plaintext", module = "blindfed.ckks", frozen)]
pub struct PyPlaintext {
    pt: Plaintext,
}

#[pymethods]
impl PyPlaintext {
    /// Encodes up to N/2 values at `level` (default top) and `scale` (default: the level's
    /// canonical scale).
    #[staticmethod]
    #[pyo3(signature = (params, values, *, level=None, scale=None))]
    fn encode(
        py: Python<'_>,
        params: &PyParameters,
        values: Values<'_>,
        level: Option<usize>,
        scale: Option<f64>,
    ) -> PyResult<Self> {
        let values = values.to_complex()?;
        let ctx = params.ctx.clone();
        Ok(PyPlaintext { pt: py.detach(|| Plaintext::encode(&ctx, &values, level, scale))? })
    }

    #[pyo3(signature = (*, complex=false))]
    fn decode<'py>(&self, py: Python<'py>, complex: bool) -> Bound<'py, PyAny> {
        let values = py.detach(|| self.pt.decode());
        to_numpy(py, values, complex)
    }

    #[getter]
    fn level(&self) -> usize {
        self.pt.level()
    }

    #[getter]
    fn scale(&self) -> f64 {
        self.pt.scale()
    }

    #[getter]
    fn slots(&self) -> usize {
        self.pt.slots()
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.pt.to_bytes())
    }

    #[staticmethod]
    fn from_bytes(py: Python<'_>, params: &PyParameters, data: &[u8]) -> PyResult<Self> {
        let ctx = params.ctx.clone();
        Ok(PyPlaintext { pt: py.detach(|| Plaintext::from_bytes(&ctx, data))? })
    }
}

/// The right-hand side of a ciphertext operator.
#[derive(FromPyObject)]
enum Operand<'py> {
    Cipher(PyRef<'py, PyCiphertext>),
    Plain(PyRef<'py, PyPlaintext>),
    Scalar(f64),
    Values(Values<'py>),
}

/// A CKKS ciphertext that behaves like a small vector: `+`, `-`, `*` with ciphertexts,
/// plaintexts, numbers and arrays; `rotate`; `to_bytes`. Multiplication relinearises and
/// rescales (one level) and needs the bundle's relinearisation key; operands at different
/// levels are brought to the lower level first.
#[pyclass(name = "Ciphertext", module = "blindfed.ckks", frozen)]
pub struct PyCiphertext {
    ct: Ciphertext,
    keys: Option<PyEvaluationKeys>,
}

impl PyCiphertext {
    fn derive(&self, ct: Ciphertext) -> PyCiphertext {
        PyCiphertext { ct, keys: self.keys.clone() }
    }

    fn relin_key(&self) -> Result<Arc<RelinKey>, Error> {
        self.keys.as_ref().and_then(|k| k.keys.relin.clone()).ok_or_else(|| {
            Error::MissingKey("multiplication needs a relinearisation key: use ct.with_keys(keys)".into())
        })
    }

    fn galois(&self) -> Result<Arc<GaloisKeys>, Error> {
        self.keys
            .as_ref()
            .and_then(|k| k.keys.galois.clone())
            .ok_or_else(|| Error::MissingKey("rotation needs Galois keys: use ct.with_keys(keys)".into()))
    }

    fn encode_like(&self, values: &Values<'_>, scale: f64) -> PyResult<Plaintext> {
        encode(self.ct.context(), values, Some(self.ct.level()), Some(scale))
    }

    fn combine(
        &self,
        py: Python<'_>,
        other: Operand<'_>,
        subtract: bool,
        reflected: bool,
    ) -> PyResult<PyCiphertext> {
        let ct = &self.ct;
        let result = match other {
            Operand::Cipher(o) => {
                let other = &o.ct;
                py.detach(|| {
                    let v = ev::align(&[ct, other])?;
                    let (a, b) = if reflected { (&v[1], &v[0]) } else { (&v[0], &v[1]) };
                    if subtract {
                        ev::sub(a, b)
                    } else {
                        ev::add(a, b)
                    }
                })?
            }
            Operand::Plain(p) => {
                let pt = &p.pt;
                py.detach(|| {
                    let r = if subtract { ev::sub_plain(ct, pt) } else { ev::add_plain(ct, pt) }?;
                    Ok::<_, Error>(if subtract && reflected { ev::negate(&r) } else { r })
                })?
            }
            Operand::Scalar(c) => match (subtract, reflected) {
                (true, true) => ev::add_scalar(&ev::negate(ct), c)?,
                (true, false) => ev::add_scalar(ct, -c)?,
                _ => ev::add_scalar(ct, c)?,
            },
            Operand::Values(v) => {
                let pt = self.encode_like(&v, ct.scale())?;
                py.detach(|| {
                    let r = if subtract { ev::sub_plain(ct, &pt) } else { ev::add_plain(ct, &pt) }?;
                    Ok::<_, Error>(if subtract && reflected { ev::negate(&r) } else { r })
                })?
            }
        };
        Ok(self.derive(result))
    }
}

#[pymethods]
impl PyCiphertext {
    /// Makes numpy defer to our reflected operators (`array - ct`), instead of broadcasting.
    #[classattr]
    fn __array_ufunc__() -> Option<()> {
        None
    }

    #[getter]
    fn level(&self) -> usize {
        self.ct.level()
    }

    #[getter]
    fn scale(&self) -> f64 {
        self.ct.scale()
    }

    /// Number of meaningful slots (a power of two).
    #[getter]
    fn slots(&self) -> usize {
        self.ct.slots()
    }

    /// Number of polynomials: 2, or 3 after `multiply(..., relinearize=False)`.
    #[getter]
    fn size(&self) -> usize {
        self.ct.size()
    }

    /// Whether `to_bytes` writes a seed instead of the second polynomial.
    #[getter]
    fn is_seeded(&self) -> bool {
        self.ct.is_seeded()
    }

    #[getter]
    fn parameters(&self) -> PyParameters {
        PyParameters { ctx: self.ct.context().clone() }
    }

    #[getter]
    fn keys(&self) -> Option<PyEvaluationKeys> {
        self.keys.clone()
    }

    /// The same ciphertext bound to an evaluation-key bundle (for `*`, `rotate`, ...).
    fn with_keys(&self, keys: &PyEvaluationKeys) -> PyResult<PyCiphertext> {
        if keys.keys.context() != self.ct.context() {
            return Err(Error::ParameterMismatch.into());
        }
        Ok(PyCiphertext { ct: self.ct.clone(), keys: Some(keys.clone()) })
    }

    fn __add__(&self, py: Python<'_>, other: Operand<'_>) -> PyResult<PyCiphertext> {
        self.combine(py, other, false, false)
    }

    fn __radd__(&self, py: Python<'_>, other: Operand<'_>) -> PyResult<PyCiphertext> {
        self.combine(py, other, false, true)
    }

    fn __sub__(&self, py: Python<'_>, other: Operand<'_>) -> PyResult<PyCiphertext> {
        self.combine(py, other, true, false)
    }

    fn __rsub__(&self, py: Python<'_>, other: Operand<'_>) -> PyResult<PyCiphertext> {
        self.combine(py, other, true, true)
    }

    fn __neg__(&self, py: Python<'_>) -> PyCiphertext {
        self.derive(py.detach(|| ev::negate(&self.ct)))
    }

    fn __mul__(&self, py: Python<'_>, other: Operand<'_>) -> PyResult<PyCiphertext> {
        self.multiply(py, other, true, true)
    }

    fn __rmul__(&self, py: Python<'_>, other: Operand<'_>) -> PyResult<PyCiphertext> {
        self.multiply(py, other, true, true)
    }

    /// Multiplies by a ciphertext, plaintext, number or array. With the defaults the result
    /// is relinearised and rescaled (one level lower, at that level's canonical scale).
    #[pyo3(signature = (other, *, relinearize=true, rescale=true))]
    fn multiply(
        &self,
        py: Python<'_>,
        other: Operand<'_>,
        relinearize: bool,
        rescale: bool,
    ) -> PyResult<PyCiphertext> {
        let ct = &self.ct;
        let product = match other {
            Operand::Cipher(o) if relinearize && rescale => {
                let rlk = self.relin_key()?;
                let other = &o.ct;
                let out = py.detach(|| {
                    let v = ev::align(&[ct, other])?;
                    ev::multiply_relin_rescale(&v[0], &v[1], &rlk)
                })?;
                return Ok(self.derive(out));
            }
            Operand::Cipher(o) => {
                let rlk = if relinearize { Some(self.relin_key()?) } else { None };
                let other = &o.ct;
                py.detach(|| {
                    let v = ev::align(&[ct, other])?;
                    let m = ev::multiply(&v[0], &v[1])?;
                    match rlk {
                        Some(k) => ev::relinearize(&m, &k),
                        None => Ok(m),
                    }
                })?
            }
            Operand::Plain(p) => {
                let pt = &p.pt;
                py.detach(|| ev::mul_plain(ct, pt))?
            }
            Operand::Scalar(c) => py.detach(|| ev::mul_scalar(ct, c))?,
            Operand::Values(v) => {
                let pt = self.encode_like(&v, ct.context().scale_at(ct.level()))?;
                py.detach(|| ev::mul_plain(ct, &pt))?
            }
        };
        let out = if rescale { py.detach(|| ev::rescale(&product))? } else { product };
        Ok(self.derive(out))
    }

    /// Relinearises a 3-polynomial ciphertext (no-op for size 2).
    fn relinearize(&self, py: Python<'_>) -> PyResult<PyCiphertext> {
        let k = self.relin_key()?;
        Ok(self.derive(py.detach(|| ev::relinearize(&self.ct, &k))?))
    }

    /// Divides by the last prime: one level down, scale divided by that prime.
    fn rescale(&self, py: Python<'_>) -> PyResult<PyCiphertext> {
        Ok(self.derive(py.detach(|| ev::rescale(&self.ct))?))
    }

    /// Drops primes down to `level` without changing the scale.
    fn drop_level(&self, level: usize) -> PyResult<PyCiphertext> {
        Ok(self.derive(ev::drop_level(&self.ct, level)?))
    }

    /// Brings the ciphertext to `level` at that level's canonical scale.
    fn adjust_level(&self, py: Python<'_>, level: usize) -> PyResult<PyCiphertext> {
        Ok(self.derive(py.detach(|| ev::adjust_level(&self.ct, level))?))
    }

    /// Rotates the slots left by `step` (right if negative).
    fn rotate(&self, py: Python<'_>, step: i64) -> PyResult<PyCiphertext> {
        let g = self.galois()?;
        Ok(self.derive(py.detach(|| ev::rotate(&self.ct, step, &g))?))
    }

    /// Several rotations sharing one decomposition of the ciphertext (hoisting).
    fn rotate_many(&self, py: Python<'_>, steps: Vec<i64>) -> PyResult<Vec<PyCiphertext>> {
        let g = self.galois()?;
        let out = py.detach(|| ev::rotate_hoisted(&self.ct, &steps, &g))?;
        Ok(out.into_iter().map(|ct| self.derive(ct)).collect())
    }

    /// Complex conjugation of every slot.
    fn conjugate(&self, py: Python<'_>) -> PyResult<PyCiphertext> {
        let g = self.galois()?;
        Ok(self.derive(py.detach(|| ev::conjugate(&self.ct, &g))?))
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let bytes = py.detach(|| self.ct.to_bytes());
        PyBytes::new(py, &bytes)
    }

    #[staticmethod]
    #[pyo3(signature = (params, data, *, keys=None))]
    fn from_bytes(
        py: Python<'_>,
        params: &PyParameters,
        data: &[u8],
        keys: Option<&PyEvaluationKeys>,
    ) -> PyResult<PyCiphertext> {
        let ctx = params.ctx.clone();
        let ct = py.detach(|| Ciphertext::from_bytes(&ctx, data))?;
        let plain = PyCiphertext { ct, keys: None };
        match keys {
            Some(k) => plain.with_keys(k),
            None => Ok(plain),
        }
    }

    fn __len__(&self) -> usize {
        self.ct.slots()
    }

    fn __repr__(&self) -> String {
        format!(
            "Ciphertext(slots={}, level={}, scale=2^{:.2}, size={}, keys={})",
            self.ct.slots(),
            self.ct.level(),
            self.ct.scale().log2(),
            self.ct.size(),
            self.keys.is_some()
        )
    }
}
