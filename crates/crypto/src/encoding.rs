//! Fixed-point encoding of update vectors, and packing of many encoded coordinates into one
//! Paillier plaintext.
//!
//! # Encoding
//! A coordinate `v` is clipped to `[-clip, clip]` and encoded as the integer
//! `round(v · 2^scale_bits)`, so `|e| ≤ M` with `M = round(clip · 2^scale_bits)`.
//!
//! # Packing
//! Paillier adds plaintexts modulo `N`, so many small integers can share one plaintext if no
//! slot ever carries into its neighbour. Each encoded value is shifted to `e + M ∈ [0, 2M]`;
//! the sum of `n` owners' slots then lies in `[0, 2nM]`. A slot of `b` bits holds it when
//! `2nM < 2^b`, which [`PackingLayout::new`] computes from the number of owners (the headroom is
//! `b - bits(2M)`, about `log2 n` bits). A plaintext holds `⌊(modulus_bits - 2) / b⌋` slots: the
//! packed integer stays below `2^(modulus_bits-2) ≤ N/2`, inside the signed plaintext range
//! `(-N/2, N/2]` that fast-paillier uses. Configurations where a sum could exceed its slot are
//! refused, never wrapped. After decryption, the sum of `k ≤ n` contributions is recovered as
//! `slot − k·M`.

use serde::{Deserialize, Serialize};

/// Encoding and packing errors. All are configuration or caller errors, except
/// [`EncodingError::SlotOverflow`] while unpacking, which means a contribution was malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodingError {
    /// Scale and clip give encoded values that do not fit in 62 bits.
    #[error("encoding range too large: clip {clip} at 2^{scale_bits} needs more than 62 bits")]
    RangeTooLarge {
        /// Clip bound.
        clip: String,
        /// Fractional bits.
        scale_bits: u32,
    },
    /// The sum over all owners could overflow a slot that fits a plaintext.
    #[error(
        "packing refused: the sum of {owners} owners needs {slot_bits}-bit slots, which leaves no room in a {plaintext_bits}-bit plaintext"
    )]
    WouldOverflow {
        /// Owners the layout must hold.
        owners: usize,
        /// Bits a slot needs.
        slot_bits: u32,
        /// Usable plaintext bits.
        plaintext_bits: u32,
    },
    /// A layout needs at least one owner.
    #[error("packing needs at least one owner")]
    NoOwners,
    /// A packed vector has the wrong number of plaintexts or bytes.
    #[error("packed data has the wrong size: {0}")]
    Size(String),
    /// A decrypted slot is larger than any honest sum of the declared contributions.
    #[error("slot {slot} holds {value}, more than {contributions} honest contributions can sum to")]
    SlotOverflow {
        /// Slot index.
        slot: usize,
        /// Slot value.
        value: u128,
        /// Contributions declared.
        contributions: usize,
    },
}

/// Fixed-point parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FixedPoint {
    /// Fractional bits.
    pub scale_bits: u32,
    /// Clip bound (positive).
    pub clip: f64,
}

impl FixedPoint {
    /// Validates the parameters.
    pub fn new(scale_bits: u32, clip: f64) -> Result<Self, EncodingError> {
        let fp = Self { scale_bits, clip };
        let too_large = || EncodingError::RangeTooLarge {
            clip: clip.to_string(),
            scale_bits,
        };
        if !(clip > 0.0 && clip.is_finite()) || scale_bits > 62 {
            return Err(too_large());
        }
        if fp.max_abs_f64() >= 2f64.powi(62) {
            return Err(too_large());
        }
        Ok(fp)
    }

    fn scale(&self) -> f64 {
        2f64.powi(self.scale_bits as i32)
    }

    fn max_abs_f64(&self) -> f64 {
        (self.clip * self.scale()).round()
    }

    /// `M`, the largest encoded magnitude.
    pub fn max_abs(&self) -> u64 {
        self.max_abs_f64() as u64
    }

    /// Clips and encodes one value. NaN encodes as 0.
    pub fn encode(&self, v: f32) -> i64 {
        let v = f64::from(v);
        if v.is_nan() {
            return 0;
        }
        let m = self.max_abs_f64();
        (v.clamp(-self.clip, self.clip) * self.scale())
            .round()
            .clamp(-m, m) as i64
    }

    /// Encodes a vector.
    pub fn encode_all(&self, values: &[f32]) -> Vec<i64> {
        values.iter().map(|&v| self.encode(v)).collect()
    }

    /// Decodes an encoded value or a sum of encoded values.
    pub fn decode(&self, e: i128) -> f64 {
        e as f64 / self.scale()
    }
}

/// How encoded vectors are packed into plaintexts for a given number of owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackingLayout {
    /// Bits per slot.
    pub slot_bits: u32,
    /// Slots per plaintext.
    pub slots_per_plaintext: usize,
    /// Usable bits per plaintext (`modulus_bits − 2`).
    pub plaintext_bits: u32,
    /// The shift `M` added to each encoded value.
    pub offset: u64,
    /// Owners whose sum the layout can hold.
    pub max_owners: usize,
}

fn bits_needed(v: u128) -> u32 {
    128 - v.leading_zeros()
}

impl PackingLayout {
    /// The tightest layout that holds the sum of `owners` contributions without overflow, or an
    /// error when none fits.
    pub fn new(fp: &FixedPoint, owners: usize, modulus_bits: u32) -> Result<Self, EncodingError> {
        if owners == 0 {
            return Err(EncodingError::NoOwners);
        }
        let m = u128::from(fp.max_abs());
        // Largest slot value: owners · 2M. It must be < 2^slot_bits.
        let max_sum = (owners as u128)
            .checked_mul(2 * m)
            .ok_or(EncodingError::WouldOverflow {
                owners,
                slot_bits: 128,
                plaintext_bits: modulus_bits.saturating_sub(2),
            })?;
        let slot_bits = bits_needed(max_sum).max(1);
        let plaintext_bits = modulus_bits.saturating_sub(2);
        if slot_bits > 120 || slot_bits > plaintext_bits {
            return Err(EncodingError::WouldOverflow {
                owners,
                slot_bits,
                plaintext_bits,
            });
        }
        Ok(Self {
            slot_bits,
            slots_per_plaintext: (plaintext_bits / slot_bits) as usize,
            plaintext_bits,
            offset: fp.max_abs(),
            max_owners: owners,
        })
    }

    /// Plaintexts needed for `len` coordinates.
    pub fn plaintexts_for(&self, len: usize) -> usize {
        len.div_ceil(self.slots_per_plaintext)
    }

    /// Bytes of one packed plaintext (big-endian, fixed width).
    pub fn plaintext_bytes(&self) -> usize {
        (self.plaintext_bits as usize).div_ceil(8)
    }

    /// Packs encoded values (each within `±M`) into big-endian plaintexts of
    /// [`plaintext_bytes`](Self::plaintext_bytes) bytes each.
    ///
    /// # Errors
    /// If a value is outside `±M` (the caller did not use the matching [`FixedPoint`]).
    pub fn pack(&self, encoded: &[i64]) -> Result<Vec<Vec<u8>>, EncodingError> {
        let width = self.plaintext_bytes();
        let mut out = Vec::with_capacity(self.plaintexts_for(encoded.len()));
        for chunk in encoded.chunks(self.slots_per_plaintext) {
            // Little-endian bit buffer; reversed to big-endian at the end.
            let mut le = vec![0u8; width];
            for (slot, &e) in chunk.iter().enumerate() {
                if e.unsigned_abs() > self.offset {
                    return Err(EncodingError::Size(format!(
                        "value {e} outside the encoding range ±{}",
                        self.offset
                    )));
                }
                let shifted = (i128::from(e) + i128::from(self.offset)) as u128;
                write_bits(
                    &mut le,
                    slot * self.slot_bits as usize,
                    shifted,
                    self.slot_bits,
                );
            }
            le.reverse();
            out.push(le);
        }
        Ok(out)
    }

    /// Unpacks `len` slot sums from decrypted plaintexts (big-endian) and removes the shift of
    /// `contributions` owners. Returns exact integer sums of the encoded values.
    pub fn unpack_sum(
        &self,
        plaintexts: &[Vec<u8>],
        len: usize,
        contributions: usize,
    ) -> Result<Vec<i128>, EncodingError> {
        if plaintexts.len() != self.plaintexts_for(len) {
            return Err(EncodingError::Size(format!(
                "{} plaintexts for {len} values, expected {}",
                plaintexts.len(),
                self.plaintexts_for(len)
            )));
        }
        if contributions == 0 || contributions > self.max_owners {
            return Err(EncodingError::Size(format!(
                "{contributions} contributions, layout holds 1..={}",
                self.max_owners
            )));
        }
        let limit = contributions as u128 * 2 * u128::from(self.offset);
        let shift = contributions as i128 * i128::from(self.offset);
        let mut out = Vec::with_capacity(len);
        for (p, pt) in plaintexts.iter().enumerate() {
            if pt.len() > self.plaintext_bytes() {
                return Err(EncodingError::Size(format!(
                    "plaintext of {} bytes, expected at most {}",
                    pt.len(),
                    self.plaintext_bytes()
                )));
            }
            let mut le = pt.clone();
            le.reverse();
            le.resize(self.plaintext_bytes(), 0);
            let slots = (len - p * self.slots_per_plaintext).min(self.slots_per_plaintext);
            for slot in 0..slots {
                let v = read_bits(&le, slot * self.slot_bits as usize, self.slot_bits);
                if v > limit {
                    return Err(EncodingError::SlotOverflow {
                        slot: p * self.slots_per_plaintext + slot,
                        value: v,
                        contributions,
                    });
                }
                out.push(v as i128 - shift);
            }
        }
        Ok(out)
    }
}

fn write_bits(le: &mut [u8], bit_offset: usize, value: u128, nbits: u32) {
    for i in 0..nbits as usize {
        if (value >> i) & 1 == 1 {
            let bit = bit_offset + i;
            le[bit / 8] |= 1 << (bit % 8);
        }
    }
}

fn read_bits(le: &[u8], bit_offset: usize, nbits: u32) -> u128 {
    let mut v = 0u128;
    for i in 0..nbits as usize {
        let bit = bit_offset + i;
        if (le[bit / 8] >> (bit % 8)) & 1 == 1 {
            v |= 1 << i;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fp() -> FixedPoint {
        FixedPoint::new(24, 4.0).expect("valid")
    }

    #[test]
    fn encoding_clips_and_rounds() {
        let f = fp();
        assert_eq!(f.encode(0.0), 0);
        assert_eq!(f.encode(1.0), 1 << 24);
        assert_eq!(f.encode(-1.0), -(1 << 24));
        assert_eq!(f.encode(100.0), 4 << 24);
        assert_eq!(f.encode(-100.0), -(4 << 24));
        assert_eq!(f.encode(f32::INFINITY), 4 << 24);
        assert_eq!(f.encode(f32::NAN), 0);
        assert_eq!(f.max_abs(), 4 << 24);
    }

    #[test]
    fn layout_headroom_grows_with_owners() {
        let f = fp();
        // M = 2^26, 2M = 2^27: one owner needs 28 bits (2^27 < 2^28).
        let one = PackingLayout::new(&f, 1, 2048).expect("fits");
        assert_eq!(one.slot_bits, 28);
        let two = PackingLayout::new(&f, 2, 2048).expect("fits");
        assert_eq!(two.slot_bits, 29);
        assert_eq!(two.slots_per_plaintext, 2046 / 29);
        let thousand = PackingLayout::new(&f, 1000, 2048).expect("fits");
        assert_eq!(thousand.slot_bits, 37); // 1000 · 2^27 < 2^37
    }

    #[test]
    fn layout_refuses_configurations_that_could_overflow() {
        let wide = FixedPoint::new(40, 1.0e6).expect("valid");
        assert!(PackingLayout::new(&wide, 1 << 20, 2048).is_ok());
        let huge = FixedPoint::new(60, 3.0).expect("valid");
        assert!(matches!(
            PackingLayout::new(&huge, usize::MAX, 2048),
            Err(EncodingError::WouldOverflow { .. })
        ));
        assert!(matches!(
            PackingLayout::new(&fp(), 0, 2048),
            Err(EncodingError::NoOwners)
        ));
        assert!(FixedPoint::new(62, 2.0).is_err());
    }

    #[test]
    fn sum_at_the_overflow_edge_is_exact() {
        // Every owner at +M and at -M: the slot sums reach exactly 2nM and 0.
        let f = fp();
        let owners = 3;
        let layout = PackingLayout::new(&f, owners, 2048).expect("fits");
        let m = f.max_abs() as i64;
        let values = vec![m, -m, 0, m];
        let packed = layout.pack(&values).expect("pack");
        let summed = add_plaintexts(&[packed.clone(), packed.clone(), packed]);
        let sums = layout.unpack_sum(&summed, 4, owners).expect("unpack");
        assert_eq!(sums, vec![3 * m as i128, -3 * m as i128, 0, 3 * m as i128]);
    }

    #[test]
    fn unpack_detects_a_sum_beyond_the_declared_contributions() {
        let layout = PackingLayout::new(&fp(), 3, 2048).expect("fits");
        let m = fp().max_abs() as i64;
        let p = layout.pack(&[m]).expect("pack");
        let summed = add_plaintexts(&[p.clone(), p.clone(), p]);
        // Three owners at +M claimed as two contributions: the slot is out of range.
        assert!(matches!(
            layout.unpack_sum(&summed, 1, 2),
            Err(EncodingError::SlotOverflow { .. })
        ));
    }

    #[test]
    fn pack_rejects_values_outside_the_range() {
        let layout = PackingLayout::new(&fp(), 2, 2048).expect("fits");
        assert!(layout.pack(&[fp().max_abs() as i64 + 1]).is_err());
    }

    /// Adds big-endian plaintexts as integers (what Paillier's homomorphism does), for tests.
    fn add_plaintexts(parts: &[Vec<Vec<u8>>]) -> Vec<Vec<u8>> {
        let n = parts[0].len();
        (0..n)
            .map(|i| {
                let width = parts[0][i].len();
                let mut acc = vec![0u16; width + 1];
                for p in parts {
                    for (j, &b) in p[i].iter().rev().enumerate() {
                        acc[j] += u16::from(b);
                    }
                }
                let mut carry = 0u16;
                let mut le = Vec::with_capacity(width);
                for a in acc.iter().take(width) {
                    let s = a + carry;
                    le.push((s & 0xff) as u8);
                    carry = s >> 8;
                }
                assert_eq!(carry, 0, "test sums fit the plaintext");
                le.reverse();
                le
            })
            .collect()
    }

    proptest! {
        #[test]
        fn pack_then_sum_recovers_exact_sums(
            owners in 1usize..6,
            scale_bits in 1u32..30,
            clip in 0.01f64..100.0,
            raw in proptest::collection::vec(proptest::collection::vec(-200.0f32..200.0, 1..200), 1..6),
        ) {
            let f = FixedPoint::new(scale_bits, clip).expect("valid");
            let layout = PackingLayout::new(&f, owners, 2048).expect("fits");
            let len = raw[0].len();
            let contributions: Vec<Vec<i64>> = raw.iter().take(owners)
                .map(|r| { let mut r = r.clone(); r.resize(len, 0.5); f.encode_all(&r) })
                .collect();
            let packed: Vec<Vec<Vec<u8>>> = contributions.iter().map(|c| layout.pack(c).expect("pack")).collect();
            let summed = add_plaintexts(&packed);
            let sums = layout.unpack_sum(&summed, len, contributions.len()).expect("unpack");
            for i in 0..len {
                let expected: i128 = contributions.iter().map(|c| i128::from(c[i])).sum();
                prop_assert_eq!(sums[i], expected);
            }
            // Clipping edges: every encoded value is within ±M and negative values survive.
            for c in &contributions {
                prop_assert!(c.iter().all(|e| e.unsigned_abs() <= f.max_abs()));
            }
        }
    }
}
