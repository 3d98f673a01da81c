//! The text forms of approximations and of a student's families: the one grammar the CLI, the
//! torch student, saved models and reports share.
//!
//! An approximation's *kind* names its function, method and degree; with its range and
//! learned constants it is the whole approximation (the coefficients are a deterministic fit
//! of those), so its canonical text is also its serialisation:
//!
//! ```text
//! exp:chebyshev:15 range=-8.0,4.0      exp:taylor:6      exp:squaring:6
//! power:2 shift=1.5 range=-3.0,6.0     (2Quad; "quad" is an alias of power:2)
//! reciprocal:goldschmidt:9 range=1.0,256.0
//! inv_sqrt:newton:31:2 range=0.05,5.0  (Chebyshev guess of degree 31, then 2 Newton steps)
//! gelu:quad                            gelu:chebyshev:7 range=-6.0,6.0
//! ```
//!
//! Within a slot the function may be left out (`chebyshev:15` for the numerator, `9` or
//! `goldschmidt:9` for the reciprocal, `31:2` or `newton:31:2` for 1/sqrt, `quad` for GELU).
//!
//! A [`StudentSpec`] names one family per slot, as `key=value` pairs separated by spaces or
//! commas: `softmax=quad denominator=constant norm=affine gelu=quad owner-norm=off`, with
//! `denominator=sum[:goldschmidt[:N]]|constant`, `norm=layernorm[:newton:G:S]|affine`. Keys
//! left out keep the base spec's value.

use crate::error::{Error, Result};

use super::approx::{self, Approximation};
use super::block::BlockShape;
use super::families::{AffineStats, BlockApprox, Denominator, Norm};

/// Where an approximation sits in the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// The softmax numerator: an exp approximation or a power.
    Numerator,
    Reciprocal,
    InvSqrt,
    Gelu,
}

impl Slot {
    pub fn parse(name: &str) -> Result<Slot> {
        Ok(match name {
            "numerator" | "exp" | "softmax" => Slot::Numerator,
            "reciprocal" => Slot::Reciprocal,
            "inv_sqrt" => Slot::InvSqrt,
            "gelu" => Slot::Gelu,
            _ => {
                return Err(Error::Spec(format!(
                    "unknown approximation slot {name:?}; expected numerator, reciprocal, inv_sqrt or gelu"
                )))
            }
        })
    }

    fn functions(self) -> &'static [&'static str] {
        match self {
            Slot::Numerator => &["exp", "power"],
            Slot::Reciprocal => &["reciprocal"],
            Slot::InvSqrt => &["inv_sqrt"],
            Slot::Gelu => &["gelu"],
        }
    }
}

fn bad(text: &str, why: impl std::fmt::Display) -> Error {
    Error::Spec(format!("bad approximation {text:?}: {why}"))
}

fn number<T: std::str::FromStr>(text: &str, part: &str, what: &str) -> Result<T> {
    part.parse().map_err(|_| bad(text, format!("{what} must be a number, got {part:?}")))
}

/// `parts[i]` as a number, or `default` if absent.
fn arg<T: std::str::FromStr + Copy>(
    text: &str,
    parts: &[&str],
    i: usize,
    default: T,
    what: &str,
) -> Result<T> {
    match parts.get(i) {
        None => Ok(default),
        Some(p) => number(text, p, what),
    }
}

/// The template an approximation kind names, on its placeholder range (calibration replaces
/// it). `parts` is the kind split on ':' with the function first.
fn kind(text: &str, parts: &[&str]) -> Result<Approximation> {
    let extra = |n: usize| -> Result<()> {
        if parts.len() > n {
            return Err(bad(text, format!("unexpected {:?}", parts[n..].join(":"))));
        }
        Ok(())
    };
    let a = match parts {
        ["exp", "chebyshev", ..] => {
            extra(3)?;
            approx::exp_chebyshev(-8.0, 4.0, arg(text, parts, 2, 15, "the degree")?)
        }
        ["exp", "taylor", ..] => {
            extra(3)?;
            approx::exp_taylor(arg(text, parts, 2, 6, "the degree")?, (-2.0, 2.0))
        }
        ["exp", "squaring", ..] => {
            extra(3)?;
            approx::exp_squaring(arg(text, parts, 2, 6, "r")?, (-8.0, 4.0))
        }
        ["power", ..] => {
            extra(2)?;
            let p = match parts.get(1) {
                None => return Err(bad(text, "power needs its exponent, e.g. power:2")),
                Some(p) => number(text, p, "the exponent")?,
            };
            approx::power(p, 0.0, (-8.0, 8.0))
        }
        ["quad"] => approx::power(2, 0.0, (-8.0, 8.0)),
        ["reciprocal", "goldschmidt", ..] => {
            extra(3)?;
            approx::goldschmidt(arg(text, parts, 2, 1, "the iterations")?, (1.0, 256.0))
        }
        ["inv_sqrt", "newton", ..] => {
            extra(4)?;
            approx::inv_sqrt(
                0.05,
                5.0,
                arg(text, parts, 2, 31, "the guess degree")?,
                arg(text, parts, 3, 2, "the Newton steps")?,
            )
        }
        ["gelu", "quad"] => Ok(approx::gelu_quad()),
        ["gelu", "chebyshev", ..] => {
            extra(3)?;
            approx::gelu_chebyshev(-6.0, 6.0, arg(text, parts, 2, 15, "the degree")?)
        }
        _ => return Err(bad(text, "unknown kind")),
    };
    a.map_err(|e| bad(text, e))
}

/// The function-qualified kind a slot's short text stands for.
fn qualify(slot: Slot, text: &str) -> String {
    let head = text.split(':').next().unwrap_or("");
    let qualified = ["exp", "power", "quad", "reciprocal", "inv_sqrt", "gelu"].contains(&head);
    match slot {
        _ if qualified && !(slot == Slot::Gelu && head == "quad") => text.to_string(),
        Slot::Numerator => format!("exp:{text}"),
        Slot::Reciprocal if head.parse::<u32>().is_ok() => format!("reciprocal:goldschmidt:{text}"),
        Slot::Reciprocal => format!("reciprocal:{text}"),
        Slot::InvSqrt if head.parse::<usize>().is_ok() => format!("inv_sqrt:newton:{text}"),
        Slot::InvSqrt => format!("inv_sqrt:{text}"),
        Slot::Gelu => format!("gelu:{text}"),
    }
}

/// A template for `slot` from its text (kind only; ranges are placeholders until calibration).
pub fn parse_approximation(slot: Slot, text: &str) -> Result<Approximation> {
    let text = text.trim();
    if text.is_empty() {
        return Err(bad(text, "empty"));
    }
    let qualified = qualify(slot, text);
    let parts: Vec<&str> = qualified.split(':').collect();
    let a = kind(text, &parts)?;
    if !slot.functions().contains(&a.function()) {
        return Err(bad(text, format!("a {} does not go in the {slot:?} slot", a.function())));
    }
    Ok(a)
}

impl Approximation {
    /// The function-qualified kind: `exp:chebyshev:15`, `power:2`, `reciprocal:goldschmidt:9`,
    /// `inv_sqrt:newton:31:2`, `gelu:quad`, `gelu:chebyshev:7`.
    pub fn kind_text(&self) -> String {
        match self {
            Approximation::Polynomial { name, poly, .. } if name == "gelu_chebyshev" => {
                format!("gelu:chebyshev:{}", poly.degree())
            }
            Approximation::Polynomial { .. } => "gelu:quad".into(),
            Approximation::ExpChebyshev { poly, .. } => format!("exp:chebyshev:{}", poly.degree()),
            Approximation::ExpTaylor { degree, .. } => format!("exp:taylor:{degree}"),
            Approximation::ExpSquaring { r, .. } => format!("exp:squaring:{r}"),
            Approximation::Goldschmidt { iterations, .. } => format!("reciprocal:goldschmidt:{iterations}"),
            Approximation::InvSqrt { guess, newton_steps, .. } => {
                format!("inv_sqrt:newton:{}:{newton_steps}", guess.degree())
            }
            Approximation::Power { p, .. } => format!("power:{p}"),
        }
    }

    /// The whole approximation as text (kind, learned constants, range): its serialisation.
    /// [`Approximation::from_text`] rebuilds exactly the same coefficients from it.
    pub fn to_text(&self) -> String {
        let (lo, hi) = self.range();
        let shift = match self {
            Approximation::Power { shift, .. } => format!(" shift={shift:?}"),
            _ => String::new(),
        };
        format!("{}{shift} range={lo:?},{hi:?}", self.kind_text())
    }

    /// The approximation [`Approximation::to_text`] wrote.
    pub fn from_text(text: &str) -> Result<Approximation> {
        let mut tokens = text.split_whitespace();
        let head = tokens.next().ok_or_else(|| bad(text, "empty"))?;
        let parts: Vec<&str> = head.split(':').collect();
        let mut a = kind(text, &parts)?;
        let (mut range, mut shift) = (None, None);
        for token in tokens {
            match token.split_once('=') {
                Some(("range", v)) => {
                    let (lo, hi) = v.split_once(',').ok_or_else(|| bad(text, "range=LO,HI"))?;
                    range = Some((number(text, lo, "range")?, number(text, hi, "range")?));
                }
                Some(("shift", v)) => shift = Some(number::<f64>(text, v, "shift")?),
                _ => return Err(bad(text, format!("unexpected {token:?}"))),
            }
        }
        if let Some(s) = shift {
            a = match a {
                Approximation::Power { p, range, .. } => approx::power(p, s, range)?,
                _ => return Err(bad(text, "only a power has a shift")),
            };
        }
        match range {
            Some(r) => a.with_range_exact(r).map_err(|e| bad(text, e)),
            None => Ok(a),
        }
    }
}

/// What the softmax divides by, before calibration.
#[derive(Clone, Debug, PartialEq)]
pub enum DenominatorKind {
    RowSum(Approximation),
    /// Learned per head.
    Constant,
}

/// Which normalisation, before calibration.
#[derive(Clone, Debug, PartialEq)]
pub enum NormKind {
    LayerNorm(Approximation),
    Affine,
}

/// The families a student uses in every block (kinds and degrees; ranges and learned
/// constants come from calibration and distillation).
#[derive(Clone, Debug, PartialEq)]
pub struct StudentSpec {
    pub numerator: Approximation,
    pub denominator: DenominatorKind,
    pub norm: NormKind,
    pub gelu: Approximation,
    /// The owner normalises the first block input of each request (block 0 and every block
    /// after a revealed one) in the clear and uploads it beside the raw input.
    pub owner_norm: bool,
    pub eps: f64,
}

/// The named specs: `reference` (exp by Chebyshev, the first student), `paper` (BlindFed's
/// choices) and `default` (the cheapest whose accuracy holds, from the study in
/// docs/approximations.md).
pub const PRESETS: [&str; 3] = ["default", "reference", "paper"];

/// The text of the default student: 2Quad over the row sum, LayerNorm, Quad GELU; the
/// cheapest ViT-Tiny block among the study's candidates whose validation accuracy held
/// (`blindfed distill --study`, docs/approximations.md).
pub const DEFAULT_SPEC: &str = "softmax=power:2 denominator=sum:goldschmidt:9 \
     norm=layernorm:newton:31:2 gelu=quad owner-norm=off";

impl StudentSpec {
    pub fn preset(name: &str) -> Result<StudentSpec> {
        let reference = StudentSpec {
            numerator: approx::exp_chebyshev(-8.0, 4.0, 15)?,
            denominator: DenominatorKind::RowSum(approx::goldschmidt(9, (1.0, 256.0))?),
            norm: NormKind::LayerNorm(approx::inv_sqrt(0.05, 5.0, 31, 2)?),
            gelu: approx::gelu_quad(),
            owner_norm: false,
            eps: 1e-6,
        };
        match name {
            "reference" => Ok(reference),
            "paper" => Ok(StudentSpec {
                numerator: approx::exp_taylor(6, (-2.0, 2.0))?,
                denominator: DenominatorKind::RowSum(approx::goldschmidt(7, (1.0, 256.0))?),
                ..reference
            }),
            "default" => StudentSpec::parse(DEFAULT_SPEC, &reference),
            _ => Err(Error::Spec(format!(
                "unknown student preset {name:?}; expected one of {}",
                PRESETS.join(", ")
            ))),
        }
    }

    /// `text` (key=value pairs) over `base`; a preset name alone is that preset.
    pub fn parse(text: &str, base: &StudentSpec) -> Result<StudentSpec> {
        let text = text.trim();
        if PRESETS.contains(&text) {
            return StudentSpec::preset(text);
        }
        let mut spec = base.clone();
        let bad = |why: String| Error::Spec(format!("bad student spec {text:?}: {why}"));
        for pair in text.split(|c: char| c == ',' || c.is_whitespace()).filter(|p| !p.is_empty()) {
            let (key, value) =
                pair.split_once('=').ok_or_else(|| bad(format!("{pair:?} is not key=value")))?;
            match key {
                "preset" => spec = StudentSpec::preset(value)?,
                "softmax" | "numerator" | "exp" => spec.numerator = parse_approximation(Slot::Numerator, value)?,
                "denominator" => {
                    spec.denominator = match value.split_once(':') {
                        _ if value == "constant" => DenominatorKind::Constant,
                        _ if value == "sum" => DenominatorKind::RowSum(approx::goldschmidt(1, (1.0, 256.0))?),
                        Some(("sum", r)) => DenominatorKind::RowSum(parse_approximation(Slot::Reciprocal, r)?),
                        _ => return Err(bad(format!("denominator is sum[:goldschmidt[:N]] or constant, got {value:?}"))),
                    }
                }
                "norm" => {
                    spec.norm = match value.split_once(':') {
                        _ if value == "affine" => NormKind::Affine,
                        _ if value == "layernorm" => NormKind::LayerNorm(approx::inv_sqrt(0.05, 5.0, 31, 2)?),
                        Some(("layernorm", r)) => NormKind::LayerNorm(parse_approximation(Slot::InvSqrt, r)?),
                        _ => return Err(bad(format!("norm is layernorm[:newton:G:S] or affine, got {value:?}"))),
                    }
                }
                "gelu" => spec.gelu = parse_approximation(Slot::Gelu, value)?,
                "owner-norm" | "owner_norm" => {
                    spec.owner_norm = match value {
                        "on" | "true" | "yes" => true,
                        "off" | "false" | "no" => false,
                        _ => return Err(bad(format!("owner-norm is on or off, got {value:?}"))),
                    }
                }
                "eps" => {
                    spec.eps = value.parse().map_err(|_| bad(format!("eps must be a number, got {value:?}")))?;
                    if !(spec.eps.is_finite() && spec.eps >= 0.0) {
                        return Err(bad(format!("eps must be finite and >= 0, got {value}")));
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "unknown key {key:?}; expected softmax, denominator, norm, gelu, owner-norm, eps or preset"
                    )))
                }
            }
        }
        Ok(spec)
    }

    /// The canonical text ([`StudentSpec::parse`] gives the same spec back).
    pub fn to_text(&self) -> String {
        let short = |a: &Approximation, prefix: &str| a.kind_text().trim_start_matches(prefix).to_string();
        let denominator = match &self.denominator {
            DenominatorKind::Constant => "constant".to_string(),
            DenominatorKind::RowSum(Approximation::Goldschmidt { iterations: 1, .. }) => "sum".to_string(),
            DenominatorKind::RowSum(r) => format!("sum:{}", short(r, "reciprocal:")),
        };
        let norm = match &self.norm {
            NormKind::Affine => "affine".to_string(),
            NormKind::LayerNorm(r) => format!("layernorm:{}", short(r, "inv_sqrt:")),
        };
        let mut text = format!(
            "softmax={} denominator={denominator} norm={norm} gelu={} owner-norm={}",
            self.numerator.kind_text(),
            short(&self.gelu, "gelu:"),
            if self.owner_norm { "on" } else { "off" }
        );
        if self.eps != 1e-6 {
            text.push_str(&format!(" eps={:?}", self.eps));
        }
        text
    }

    /// The block approximations before calibration: placeholder ranges, unit constants and
    /// identity statistics.
    pub fn block_approx(&self, shape: &BlockShape) -> BlockApprox {
        BlockApprox {
            numerator: self.numerator.clone(),
            denominator: match &self.denominator {
                DenominatorKind::RowSum(r) => Denominator::RowSum(r.clone()),
                DenominatorKind::Constant => Denominator::Constant(vec![1.0; shape.heads]),
            },
            norm: match &self.norm {
                NormKind::LayerNorm(r) => Norm::LayerNorm(r.clone()),
                NormKind::Affine => Norm::Affine {
                    norm1: AffineStats::identity(shape.width),
                    norm2: AffineStats::identity(shape.width),
                },
            },
            gelu: self.gelu.clone(),
            eps: self.eps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_qualified_texts_parse_to_the_same_template() {
        let cases = [
            (Slot::Numerator, "chebyshev:15", "exp:chebyshev:15"),
            (Slot::Numerator, "exp:taylor", "exp:taylor:6"),
            (Slot::Numerator, "quad", "power:2"),
            (Slot::Numerator, "power:4", "power:4"),
            (Slot::Reciprocal, "9", "reciprocal:goldschmidt:9"),
            (Slot::Reciprocal, "goldschmidt:7", "reciprocal:goldschmidt:7"),
            (Slot::InvSqrt, "31:2", "inv_sqrt:newton:31:2"),
            (Slot::InvSqrt, "newton:15:3", "inv_sqrt:newton:15:3"),
            (Slot::Gelu, "quad", "gelu:quad"),
            (Slot::Gelu, "chebyshev:7", "gelu:chebyshev:7"),
        ];
        for (slot, text, kind) in cases {
            assert_eq!(parse_approximation(slot, text).unwrap().kind_text(), kind, "{text}");
        }
    }

    #[test]
    fn bad_texts_are_refused_with_the_reason() {
        for (slot, text) in [
            (Slot::Numerator, "chebyshev:x"),
            (Slot::Numerator, "power"),
            (Slot::Numerator, "power:3"),
            (Slot::Numerator, "sine:3"),
            (Slot::Numerator, "exp:chebyshev:15:2"),
            (Slot::Gelu, "power:2"),
            (Slot::Reciprocal, "gelu:quad"),
            (Slot::InvSqrt, ""),
        ] {
            let err = parse_approximation(slot, text).unwrap_err();
            assert!(matches!(err, Error::Spec(_)), "{text}: {err}");
            assert!(err.to_string().contains(&format!("{:?}", text.trim())), "{err}");
        }
    }

    #[test]
    fn canonical_text_round_trips_exactly() {
        let all = [
            approx::exp_chebyshev(-7.3, 3.1, 15).unwrap(),
            approx::exp_taylor(6, (-2.5, 2.25)).unwrap(),
            approx::exp_squaring(6, (-8.0, 4.0)).unwrap(),
            approx::power(2, 1.234_567_890_123, (-3.0, 6.5)).unwrap(),
            approx::power(4, -0.5, (-1.0, 1.0)).unwrap(),
            approx::goldschmidt(11, (2.1, 300.7)).unwrap(),
            approx::inv_sqrt(0.013, 4.7, 31, 2).unwrap(),
            approx::gelu_quad().with_range_exact((-6.1, 7.2)).unwrap(),
            approx::gelu_chebyshev(-5.5, 6.25, 7).unwrap(),
        ];
        for a in all {
            let text = a.to_text();
            assert_eq!(Approximation::from_text(&text).unwrap(), a, "{text}");
        }
        assert!(Approximation::from_text("exp:chebyshev:15 range=1.0").is_err());
        assert!(Approximation::from_text("exp:chebyshev:15 shift=1.0").is_err());
        assert!(Approximation::from_text("exp:chebyshev:15 range=4.0,-8.0").is_err());
        assert!(Approximation::from_text("power:2 color=red").is_err());
    }

    #[test]
    fn student_specs_parse_print_and_refuse() {
        let reference = StudentSpec::preset("reference").unwrap();
        for name in PRESETS {
            let spec = StudentSpec::preset(name).unwrap();
            assert_eq!(StudentSpec::parse(&spec.to_text(), &reference).unwrap(), spec, "{name}");
        }
        let s =
            StudentSpec::parse("softmax=quad, denominator=constant norm=affine owner-norm=on", &reference)
                .unwrap();
        assert_eq!(s.numerator.kind_text(), "power:2");
        assert_eq!(s.denominator, DenominatorKind::Constant);
        assert_eq!(s.norm, NormKind::Affine);
        assert!(s.owner_norm);
        assert_eq!(s.gelu, reference.gelu);
        assert_eq!(StudentSpec::parse("paper", &s).unwrap(), StudentSpec::preset("paper").unwrap());
        for text in ["softmax", "color=red", "denominator=max", "norm=batch", "owner-norm=maybe", "eps=-1"] {
            assert!(matches!(StudentSpec::parse(text, &reference), Err(Error::Spec(_))), "{text}");
        }
        let shape = BlockShape::new(5, 8, 2, 16).unwrap();
        let a = s.block_approx(&shape);
        a.check(8, 2).unwrap();
        assert_eq!(a.denominator, Denominator::Constant(vec![1.0, 1.0]));
    }
}
