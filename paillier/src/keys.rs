//! Keys: generation, validation, canonical encoding, fingerprints and files.

use crate::crt::Crt;
use crate::error::{PaillierError, Result};
use crate::mont::{Modulus, Width};
use crypto_bigint::{BoxedUint, ConcatenatingMul, Gcd, Limb, NonZero, Odd, RandomBits, Resize};
use crypto_primes::Flavor;
use rand_core::{CryptoRng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Size of the modulus N.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum KeySize {
    /// N of 2048 bits (about 112-bit security), the default.
    #[default]
    Bits2048,
    /// N of 3072 bits (about 128-bit security).
    Bits3072,
}

impl KeySize {
    /// The modulus size in bits.
    pub fn bits(self) -> u32 {
        match self {
            KeySize::Bits2048 => 2048,
            KeySize::Bits3072 => 3072,
        }
    }

    /// The size of a modulus of `bits` bits, if supported.
    pub fn from_bits(bits: u32) -> Result<Self> {
        match bits {
            2048 => Ok(KeySize::Bits2048),
            3072 => Ok(KeySize::Bits3072),
            other => Err(PaillierError::UnsupportedKeySize(other)),
        }
    }

    /// The symmetric security level in bits (NIST SP 800-57).
    pub fn security_bits(self) -> u32 {
        match self {
            KeySize::Bits2048 => 112,
            KeySize::Bits3072 => 128,
        }
    }
}

const PUBLIC_MAGIC: [u8; 4] = *b"VLPK";
const SECRET_MAGIC: [u8; 4] = *b"VLSK";
const FORMAT_VERSION: u16 = 1;
/// Serialized keys are small; anything longer is rejected before allocation.
const KEY_ENCODING_LIMIT: usize = 16 * 1024;

#[derive(Serialize, Deserialize)]
struct PublicKeyWire {
    magic: [u8; 4],
    version: u16,
    bits: u32,
    n: Vec<u8>,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct SecretKeyWire {
    magic: [u8; 4],
    version: u16,
    bits: u32,
    p: Vec<u8>,
    q: Vec<u8>,
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_big_endian()
        .with_fixed_int_encoding()
        .with_limit::<KEY_ENCODING_LIMIT>()
}

pub(crate) struct PublicKeyInner {
    pub(crate) size: KeySize,
    pub(crate) bits: u32,
    pub(crate) n: BoxedUint,
    pub(crate) n_odd: Odd<BoxedUint>,
    /// N² with `2·bits` precision.
    pub(crate) nn: Odd<BoxedUint>,
    /// Montgomery context modulo N²: every ciphertext operation runs here.
    pub(crate) nn_ctx: Modulus,
    /// floor(N/2): residues above it decode as negative.
    pub(crate) half_n: BoxedUint,
    pub(crate) fingerprint: [u8; 32],
    pub(crate) encoding: Vec<u8>,
}

/// A Paillier public key (g = N + 1). Cheap to clone.
#[derive(Clone)]
pub struct PublicKey {
    pub(crate) inner: Arc<PublicKeyInner>,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.inner.fingerprint == other.inner.fingerprint
    }
}
impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PublicKey({} bits, {})",
            self.inner.bits,
            self.fingerprint_hex()
        )
    }
}

impl PublicKey {
    /// Builds a public key from its modulus, checking its size and shape.
    pub fn from_modulus(n: &BoxedUint) -> Result<Self> {
        let bits = n.bit_width_vartime();
        let size = KeySize::from_bits(bits)?;
        let n = n.resize_unchecked(bits);
        let n_odd: Odd<BoxedUint> = Option::from(Odd::new(n.clone()))
            .ok_or_else(|| PaillierError::MalformedKey("modulus N is even".into()))?;
        // Tiny factors would make N trivially factorable; a real modulus has none.
        for small in [3u32, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47] {
            if n.rem_limb(NonZero::<Limb>::from_u32(
                std::num::NonZeroU32::MIN.saturating_add(small - 1),
            ))
            .0 == 0
            {
                return Err(PaillierError::MalformedKey(format!(
                    "modulus N is divisible by {small}"
                )));
            }
        }
        let nn_value = n.concatenating_mul(&n).resize_unchecked(2 * bits);
        let nn: Odd<BoxedUint> = Option::from(Odd::new(nn_value))
            .ok_or_else(|| PaillierError::MalformedKey("N² is even".into()))?;
        let nn_ctx = Modulus::new(nn.as_ref(), 2 * bits, Width::Full);
        let half_n = n.shr(1);
        let wire = PublicKeyWire {
            magic: PUBLIC_MAGIC,
            version: FORMAT_VERSION,
            bits,
            n: n.to_be_bytes().to_vec(),
        };
        let encoding = bincode::serde::encode_to_vec(&wire, bincode_config())
            .map_err(|e| PaillierError::Encoding(e.to_string()))?;
        let fingerprint: [u8; 32] = Sha256::digest(&encoding).into();
        Ok(PublicKey {
            inner: Arc::new(PublicKeyInner {
                size,
                bits,
                n,
                n_odd,
                nn,
                nn_ctx,
                half_n,
                fingerprint,
                encoding,
            }),
        })
    }

    /// The modulus size.
    pub fn size(&self) -> KeySize {
        self.inner.size
    }

    /// Bits of N.
    pub fn bits(&self) -> u32 {
        self.inner.bits
    }

    /// The modulus N.
    pub fn n(&self) -> &BoxedUint {
        &self.inner.n
    }

    /// N², the ciphertext modulus.
    pub fn n_squared(&self) -> &BoxedUint {
        self.inner.nn.as_ref()
    }

    /// N² with its root, for inversions.
    pub(crate) fn inversion(&self) -> crate::mont::SquareModulus<'_> {
        crate::mont::SquareModulus {
            root: &self.inner.n_odd,
            square: &self.inner.nn,
        }
    }

    /// Bytes of one serialized ciphertext (2·bits/8).
    pub fn ciphertext_len(&self) -> usize {
        (2 * self.inner.bits / 8) as usize
    }

    /// SHA-256 of the canonical encoding: what devices pin in their config.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.inner.fingerprint
    }

    /// The fingerprint as 64 lowercase hex digits.
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.inner.fingerprint)
    }

    /// The canonical, versioned encoding (bincode 2).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.inner.encoding.clone()
    }

    /// Decodes and validates a public key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > KEY_ENCODING_LIMIT {
            return Err(PaillierError::Encoding(format!(
                "public key encoding of {} bytes exceeds {KEY_ENCODING_LIMIT}",
                bytes.len()
            )));
        }
        // Both kinds start with their magic: name the mix-up instead of
        // reporting where the other layout stopped decoding.
        if bytes.starts_with(&SECRET_MAGIC) {
            return Err(PaillierError::WrongKeyKind {
                expected: "public key",
                found: "secret key",
            });
        }
        let (wire, used): (PublicKeyWire, usize) =
            bincode::serde::decode_from_slice(bytes, bincode_config())
                .map_err(|e| PaillierError::Encoding(format!("public key: {e}")))?;
        if used != bytes.len() {
            return Err(PaillierError::Encoding(format!(
                "public key: {} trailing bytes",
                bytes.len() - used
            )));
        }
        if wire.magic != PUBLIC_MAGIC {
            return Err(PaillierError::Encoding(
                "not a veil public key (bad magic)".into(),
            ));
        }
        if wire.version != FORMAT_VERSION {
            return Err(PaillierError::Encoding(format!(
                "public key format version {} is not supported (expected {FORMAT_VERSION})",
                wire.version
            )));
        }
        let size = KeySize::from_bits(wire.bits)?;
        if wire.n.len() != (size.bits() / 8) as usize {
            return Err(PaillierError::Encoding(format!(
                "modulus has {} bytes, expected {}",
                wire.n.len(),
                size.bits() / 8
            )));
        }
        let n = BoxedUint::from_be_slice(&wire.n, size.bits())
            .map_err(|e| PaillierError::Encoding(format!("modulus: {e:?}")))?;
        if n.bit_width_vartime() != size.bits() {
            return Err(PaillierError::MalformedKey(format!(
                "modulus has {} significant bits, expected {}",
                n.bit_width_vartime(),
                size.bits()
            )));
        }
        Self::from_modulus(&n)
    }

    /// Writes the public key to a file (world-readable is fine).
    pub fn write_to_file(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_bytes()).map_err(|source| PaillierError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads and validates a public key file.
    pub fn read_from_file(path: &Path) -> Result<Self> {
        let bytes = read_limited(path)?;
        Self::from_bytes(&bytes)
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>> {
    let io = |source| PaillierError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > KEY_ENCODING_LIMIT as u64 {
        return Err(PaillierError::Encoding(format!(
            "{}: {} bytes is too large for a key file",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read(path).map_err(io)
}

/// A Paillier secret key: the primes and the CRT values derived from them.
/// Zeroized on drop; never printed.
pub struct SecretKey {
    public: PublicKey,
    p: BoxedUint,
    q: BoxedUint,
    pub(crate) crt: Box<Crt>,
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.p.zeroize();
        self.q.zeroize();
        // The CRT engine zeroizes itself (ZeroizeOnDrop).
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(for {:?}, redacted)", self.public)
    }
}

impl SecretKey {
    /// Generates a fresh key pair with crypto-primes (both primes in
    /// parallel).
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R, size: KeySize) -> Result<Self> {
        let half = size.bits() / 2;
        loop {
            let mut seeds = [[0u8; 32]; 2];
            for seed in &mut seeds {
                rng.fill_bytes(seed);
            }
            let [seed_p, seed_q] = seeds;
            let (p, q) = rayon::join(
                || random_prime_two_msb(seed_p, half),
                || random_prime_two_msb(seed_q, half),
            );
            if p == q {
                continue;
            }
            return Self::from_primes(&p, &q);
        }
    }

    /// Builds a secret key from its primes, checking them.
    pub fn from_primes(p: &BoxedUint, q: &BoxedUint) -> Result<Self> {
        let p = Zeroizing::new(p.clone());
        let q = Zeroizing::new(q.clone());
        let pb = p.bit_width_vartime();
        let qb = q.bit_width_vartime();
        if pb != qb {
            return Err(PaillierError::MalformedKey(format!(
                "primes of different sizes ({pb} and {qb} bits)"
            )));
        }
        let size = KeySize::from_bits(2 * pb)?;
        let half = size.bits() / 2;
        let p = Zeroizing::new((*p).clone().resize_unchecked(half));
        let q = Zeroizing::new((*q).clone().resize_unchecked(half));
        if *p == *q {
            return Err(PaillierError::MalformedKey("p equals q".into()));
        }
        if !crypto_primes::is_prime(Flavor::Any, &*p) || !crypto_primes::is_prime(Flavor::Any, &*q)
        {
            return Err(PaillierError::MalformedKey("a factor is not prime".into()));
        }
        let n = p.concatenating_mul(&*q);
        if n.bit_width_vartime() != size.bits() {
            return Err(PaillierError::MalformedKey(format!(
                "N = p·q has {} bits, expected {}",
                n.bit_width_vartime(),
                size.bits()
            )));
        }
        // gcd(N, (p-1)(q-1)) = 1 is what makes g = N + 1 work; it holds for
        // same-size primes, but an imported key is checked anyway.
        let one = BoxedUint::one_with_precision(half);
        let phi = Zeroizing::new(
            p.wrapping_sub(&one)
                .concatenating_mul(&q.wrapping_sub(&one)),
        );
        if !n.gcd(&*phi).is_one().to_bool() {
            return Err(PaillierError::MalformedKey("gcd(N, φ(N)) ≠ 1".into()));
        }
        let public = PublicKey::from_modulus(&n)?;
        let crt = Crt::new(&p, &q, half)
            .map(Box::new)
            .ok_or_else(|| PaillierError::MalformedKey("CRT values do not exist".into()))?;
        Ok(SecretKey {
            public,
            p: (*p).clone(),
            q: (*q).clone(),
            crt,
        })
    }

    /// The matching public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The canonical, versioned encoding. The result is secret: keep it in
    /// a `Zeroizing` buffer, as returned.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let wire = SecretKeyWire {
            magic: SECRET_MAGIC,
            version: FORMAT_VERSION,
            bits: self.public.bits(),
            p: self.p.to_be_bytes().to_vec(),
            q: self.q.to_be_bytes().to_vec(),
        };
        Zeroizing::new(
            bincode::serde::encode_to_vec(&wire, bincode_config())
                .expect("encoding a secret key into memory cannot fail"),
        )
    }

    /// Decodes and validates a secret key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > KEY_ENCODING_LIMIT {
            return Err(PaillierError::Encoding(
                "secret key encoding too long".into(),
            ));
        }
        if bytes.starts_with(&PUBLIC_MAGIC) {
            return Err(PaillierError::WrongKeyKind {
                expected: "secret key",
                found: "public key",
            });
        }
        let (wire, used): (SecretKeyWire, usize) =
            bincode::serde::decode_from_slice(bytes, bincode_config())
                .map_err(|e| PaillierError::Encoding(format!("secret key: {e}")))?;
        if used != bytes.len() {
            return Err(PaillierError::Encoding("secret key: trailing bytes".into()));
        }
        if wire.magic != SECRET_MAGIC {
            return Err(PaillierError::Encoding(
                "not a veil secret key (bad magic)".into(),
            ));
        }
        if wire.version != FORMAT_VERSION {
            return Err(PaillierError::Encoding(format!(
                "secret key format version {} is not supported (expected {FORMAT_VERSION})",
                wire.version
            )));
        }
        let size = KeySize::from_bits(wire.bits)?;
        let half = size.bits() / 2;
        let expect = (half / 8) as usize;
        if wire.p.len() != expect || wire.q.len() != expect {
            return Err(PaillierError::Encoding(format!(
                "primes must have {expect} bytes each"
            )));
        }
        let p = Zeroizing::new(
            BoxedUint::from_be_slice(&wire.p, half)
                .map_err(|e| PaillierError::Encoding(format!("p: {e:?}")))?,
        );
        let q = Zeroizing::new(
            BoxedUint::from_be_slice(&wire.q, half)
                .map_err(|e| PaillierError::Encoding(format!("q: {e:?}")))?,
        );
        Self::from_primes(&p, &q)
    }

    /// Writes the secret key to a new file readable by its owner only (mode
    /// 0600 from creation, so it is never briefly world-readable).
    pub fn write_to_file(&self, path: &Path) -> Result<()> {
        write_secret_file(path, &self.to_bytes())
    }

    /// Reads and validates a secret key file, warning when its permissions
    /// let anyone but the owner read it.
    pub fn read_from_file(path: &Path) -> Result<Self> {
        warn_if_exposed(path);
        let bytes = Zeroizing::new(read_limited(path)?);
        Self::from_bytes(&bytes)
    }
}

/// Writes `bytes` to `path` with mode 0600, replacing any existing file
/// atomically (write to a temporary sibling, then rename).
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |source| PaillierError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp-secret");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(io)?;
    #[cfg(unix)]
    {
        // An existing temporary file keeps its old mode; force it.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    // The rename lives in the directory: until the directory is synced a
    // crash can bring back the old file (for a counter mark, a rollback
    // that reuses frame counters).
    sync_parent_dir(path).map_err(io)
}

fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Logs a warning when a secret file is readable or writable by group or
/// others. Returns whether it is.
pub fn warn_if_exposed(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "secret file is accessible to other users; chmod 600 it"
                );
                return true;
            }
        }
    }
    false
}

fn random_prime_two_msb(seed: [u8; 32], bits: u32) -> BoxedUint {
    use crypto_primes::hazmat::{SetBits, SmallFactorsSieveFactory};
    let mut rng = rand::rngs::ChaCha20Rng::from_seed(seed);
    // Setting the two top bits makes p·q exactly twice as long.
    let factory = SmallFactorsSieveFactory::<BoxedUint>::new(Flavor::Any, bits, SetBits::TwoMsb)
        .expect("prime sizes of 1024 and 1536 bits are valid sieve sizes");
    let found = crypto_primes::sieve_and_find(&mut rng, factory, |_rng, candidate| {
        crypto_primes::is_prime(Flavor::Any, candidate)
    });
    let mut seed = seed;
    seed.zeroize();
    match found {
        Ok(Some(p)) => p,
        // The sieve only gives up after exhausting its range, which does not
        // happen at these sizes; fall back to the plain generator.
        _ => crypto_primes::random_prime::<BoxedUint, _>(&mut rng, Flavor::Any, bits),
    }
}

/// A freshly generated key is usable straight away; this helper is what
/// `veil keygen` calls.
pub fn generate_keypair<R: CryptoRng + ?Sized>(rng: &mut R, size: KeySize) -> Result<SecretKey> {
    SecretKey::generate(rng, size)
}

pub(crate) fn random_below<R: CryptoRng + ?Sized>(
    rng: &mut R,
    bound: &NonZero<BoxedUint>,
) -> BoxedUint {
    use crypto_bigint::RandomMod;
    BoxedUint::random_mod_vartime(rng, bound)
}

pub(crate) fn random_bits<R: CryptoRng + ?Sized>(rng: &mut R, bits: u32) -> BoxedUint {
    BoxedUint::random_bits(rng, bits)
}
