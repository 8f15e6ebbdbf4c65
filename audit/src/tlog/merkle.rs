//! The RFC 6962 / RFC 9162 Merkle tree: hashing, proofs and their verification.
//!
//! Leaf hashes are `SHA-256(0x00 ‖ data)`, interior nodes
//! `SHA-256(0x01 ‖ left ‖ right)` (RFC 9162 section 2.1.1), and a tree of `n`
//! leaves splits at the largest power of two below `n`. The empty tree's hash
//! is `SHA-256("")`.

use std::fmt;

use sha2::{Digest, Sha256};

/// A SHA-256 hash: a leaf, an interior node or a root.
pub type Hash = [u8; 32];

/// The root of the empty tree: `SHA-256("")`.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// `SHA-256(0x00 ‖ data)`: the hash of a leaf.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`: the hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly below `n` (`n` ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Why a proof was not produced or did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not below the tree size.
    IndexOutOfRange {
        /// The index asked for.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A tree size beyond the leaves known, or a consistency proof from a
    /// larger tree to a smaller one.
    SizeOutOfRange {
        /// The size asked for.
        size: u64,
        /// The largest size possible here.
        max: u64,
    },
    /// The proof has the wrong number of hashes for its sizes.
    WrongLength {
        /// Hashes given.
        got: usize,
        /// Hashes expected.
        expected: usize,
    },
    /// The proof computes another root than the one claimed.
    RootMismatch,
}

impl fmt::Display for ProofError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IndexOutOfRange { index, size } => {
                write!(f, "leaf index {index} is not below the tree size {size}")
            }
            Self::SizeOutOfRange { size, max } => {
                write!(f, "tree size {size} is beyond the largest possible {max}")
            }
            Self::WrongLength { got, expected } => {
                write!(f, "proof has {got} hashes, {expected} expected")
            }
            Self::RootMismatch => f.write_str("proof does not lead to the root"),
        }
    }
}

impl std::error::Error for ProofError {}

/// A Merkle tree over leaf hashes, kept in memory with every complete
/// subtree's hash, so that the root of any earlier size and any inclusion
/// or consistency proof cost `O(log n)` hash look-ups and at most as many
/// hash computations.
///
/// Level `k` holds the hashes of the aligned complete subtrees of `2^k`
/// leaves: about `2n` hashes (64 bytes per leaf) in all. Appending is
/// amortised one hash per leaf.
///
/// ```
/// use idempotency_audit::tlog::{MerkleTree, leaf_hash, verify_inclusion};
/// let mut tree = MerkleTree::new();
/// for data in [&b"a"[..], b"b", b"c"] {
///     tree.push(leaf_hash(data));
/// }
/// let root = tree.root();
/// let proof = tree.inclusion_proof(1, 3).unwrap();
/// verify_inclusion(&leaf_hash(b"b"), 1, 3, &proof, &root).unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree over `leaves` (leaf hashes, see [`leaf_hash`]).
    pub fn from_leaves(leaves: impl IntoIterator<Item = Hash>) -> Self {
        let mut tree = Self::new();
        tree.extend(leaves);
        tree
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let nodes = &mut self.levels[level];
            nodes.push(node);
            if nodes.len() % 2 == 1 {
                return;
            }
            node = node_hash(&nodes[nodes.len() - 2], &nodes[nodes.len() - 1]);
            level += 1;
        }
    }

    /// Appends leaf hashes.
    pub fn extend(&mut self, leaves: impl IntoIterator<Item = Hash>) {
        let leaves = leaves.into_iter();
        if let Some(first) = self.levels.first_mut() {
            first.reserve(leaves.size_hint().0);
        }
        for leaf in leaves {
            self.push(leaf);
        }
    }

    /// The leaf hash at `index`, if there is one.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        self.root_at(self.size()).unwrap_or(EMPTY_ROOT)
    }

    /// The root of the tree of the first `size` leaves.
    ///
    /// # Errors
    ///
    /// [`ProofError::SizeOutOfRange`] when `size` exceeds [`size`](Self::size).
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        self.check_size(size)?;
        Ok(if size == 0 {
            EMPTY_ROOT
        } else {
            self.subtree(0, size)
        })
    }

    /// The inclusion proof (RFC 9162 section 2.1.3.1, `PATH(m, D[n])`) of
    /// the leaf at `index` in the tree of the first `size` leaves.
    ///
    /// # Errors
    ///
    /// [`ProofError::SizeOutOfRange`] or [`ProofError::IndexOutOfRange`].
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(size)?;
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Ok(proof)
    }

    /// The consistency proof (RFC 9162 section 2.1.4.1, `PROOF(m, D[n])`)
    /// that the tree of the first `old` leaves is a prefix of the tree of
    /// the first `new` leaves. Empty when `old` is 0 or equals `new`.
    ///
    /// # Errors
    ///
    /// [`ProofError::SizeOutOfRange`] when `new` exceeds the tree or `old`
    /// exceeds `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(new)?;
        if old > new {
            return Err(ProofError::SizeOutOfRange {
                size: old,
                max: new,
            });
        }
        let mut proof = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut proof);
        }
        Ok(proof)
    }

    fn check_size(&self, size: u64) -> Result<(), ProofError> {
        if size > self.size() {
            return Err(ProofError::SizeOutOfRange {
                size,
                max: self.size(),
            });
        }
        Ok(())
    }

    /// `MTH(D[start..start + size])`, where the range is a left-aligned
    /// part of an RFC 6962 split (so every complete piece is aligned).
    fn subtree(&self, start: u64, size: u64) -> Hash {
        if size.is_power_of_two() && start.is_multiple_of(size) {
            let level = size.trailing_zeros() as usize;
            return self.levels[level][(start >> level) as usize];
        }
        let k = split(size);
        node_hash(&self.subtree(start, k), &self.subtree(start + k, size - k))
    }

    /// `PATH(m, D[start..start + size])`.
    fn path(&self, m: u64, start: u64, size: u64, proof: &mut Vec<Hash>) {
        if size <= 1 {
            return;
        }
        let k = split(size);
        if m < k {
            self.path(m, start, k, proof);
            proof.push(self.subtree(start + k, size - k));
        } else {
            self.path(m - k, start + k, size - k, proof);
            proof.push(self.subtree(start, k));
        }
    }

    /// `SUBPROOF(m, D[start..start + size], complete)`.
    fn subproof(&self, m: u64, start: u64, size: u64, complete: bool, proof: &mut Vec<Hash>) {
        if m == size {
            if !complete {
                proof.push(self.subtree(start, size));
            }
            return;
        }
        let k = split(size);
        if m <= k {
            self.subproof(m, start, k, complete, proof);
            proof.push(self.subtree(start + k, size - k));
        } else {
            self.subproof(m - k, start + k, size - k, false, proof);
            proof.push(self.subtree(start, k));
        }
    }
}

/// The root of a tree over `leaves` (leaf hashes), computed in one pass
/// with `O(log n)` memory.
pub fn root_of(leaves: impl IntoIterator<Item = Hash>) -> Hash {
    // The stack holds the roots of complete subtrees of strictly decreasing size.
    let mut stack: Vec<(u64, Hash)> = Vec::new();
    for leaf in leaves {
        let mut node = (1u64, leaf);
        while let Some(&(size, left)) = stack.last() {
            if size != node.0 {
                break;
            }
            stack.pop();
            node = (size * 2, node_hash(&left, &node.1));
        }
        stack.push(node);
    }
    let mut iter = stack.into_iter().rev();
    match iter.next() {
        None => EMPTY_ROOT,
        Some((_, mut right)) => {
            for (_, left) in iter {
                right = node_hash(&left, &right);
            }
            right
        }
    }
}

/// Verifies an inclusion proof (RFC 9162 section 2.1.3.2): that `leaf` is
/// the leaf hash at `index` of the tree of `size` leaves whose root is `root`.
///
/// # Errors
///
/// [`ProofError::IndexOutOfRange`], [`ProofError::WrongLength`] or
/// [`ProofError::RootMismatch`].
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_len(index, size);
    if proof.len() != expected {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            expected,
        });
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return Err(ProofError::RootMismatch);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n == 0 && r == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// The number of hashes in the inclusion proof of `index` in a tree of `size`.
fn inclusion_len(index: u64, size: u64) -> usize {
    let (mut len, mut size, mut m) = (0, size, index);
    while size > 1 {
        let k = split(size);
        len += 1;
        if m < k {
            size = k;
        } else {
            m -= k;
            size -= k;
        }
    }
    len
}

/// Verifies a consistency proof (RFC 9162 section 2.1.4.2): that the tree
/// of `old` leaves with root `old_root` is a prefix of the tree of `new`
/// leaves with root `new_root`.
///
/// # Errors
///
/// [`ProofError::SizeOutOfRange`] when `old > new`, [`ProofError::WrongLength`]
/// or [`ProofError::RootMismatch`].
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::SizeOutOfRange {
            size: old,
            max: new,
        });
    }
    if old == new {
        return match (proof.is_empty(), old_root == new_root) {
            (false, _) => Err(ProofError::WrongLength {
                got: proof.len(),
                expected: 0,
            }),
            (true, true) => Ok(()),
            (true, false) => Err(ProofError::RootMismatch),
        };
    }
    if old == 0 {
        // Every tree extends the empty one; the proof is empty.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength {
                got: proof.len(),
                expected: 0,
            })
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength {
            got: 0,
            expected: 1,
        });
    }
    // Step 2: when `old` is a power of two, the old root is the first node.
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut f_n, mut s_n) = (old - 1, new - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s_n == 0 {
            return Err(ProofError::RootMismatch);
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if fr == *old_root && sr == *new_root && s_n == 0 {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// The RFC 6962 test leaves of certificate-transparency-go and
    /// transparency-dev/merkle (`testonly/constants.go`).
    const LEAF_INPUTS: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];

    /// The roots of the trees of the first 1..=8 of those leaves.
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn reference_tree() -> MerkleTree {
        MerkleTree::from_leaves(
            LEAF_INPUTS
                .iter()
                .map(|d| leaf_hash(&hex::decode(d).unwrap())),
        )
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(EMPTY_ROOT, <[u8; 32]>::from(Sha256::digest(b"")));
        assert_eq!(MerkleTree::new().root(), EMPTY_ROOT);
        assert_eq!(root_of([]), EMPTY_ROOT);
    }

    #[test]
    fn roots_match_the_rfc6962_test_vectors() {
        let tree = reference_tree();
        for (n, want) in ROOTS.iter().enumerate() {
            let size = n as u64 + 1;
            assert_eq!(tree.root_at(size).unwrap(), h(want), "size {size}");
            assert_eq!(root_of((0..size).map(|i| tree.leaf(i).unwrap())), h(want));
            let mut grown = MerkleTree::new();
            grown.extend((0..size).map(|i| tree.leaf(i).unwrap()));
            assert_eq!(grown.root(), h(want));
        }
        // The leaf and node prefixes: one leaf is H(0x00), two leaves H(0x01 || l0 || l1).
        assert_eq!(leaf_hash(b""), h(ROOTS[0]));
        assert_eq!(
            node_hash(&tree.leaf(0).unwrap(), &tree.leaf(1).unwrap()),
            h(ROOTS[1])
        );
    }

    #[test]
    fn proofs_match_the_rfc6962_test_vectors() {
        let tree = reference_tree();
        let inclusion: [(u64, u64, &[&str]); 3] = [
            (0, 1, &[]),
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (index, size, want) in inclusion {
            let proof = tree.inclusion_proof(index, size).unwrap();
            assert_eq!(proof, want.iter().map(|s| h(s)).collect::<Vec<_>>());
            let root = tree.root_at(size).unwrap();
            verify_inclusion(&tree.leaf(index).unwrap(), index, size, &proof, &root).unwrap();
        }
        let consistency: [(u64, u64, &[&str]); 3] = [
            (
                2,
                8,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (old, new, want) in consistency {
            let proof = tree.consistency_proof(old, new).unwrap();
            assert_eq!(proof, want.iter().map(|s| h(s)).collect::<Vec<_>>());
            let (r1, r2) = (tree.root_at(old).unwrap(), tree.root_at(new).unwrap());
            verify_consistency(old, new, &r1, &r2, &proof).unwrap();
        }
    }

    /// RFC 9162 section 2.1, literally, over a slice: the reference the
    /// cached tree is compared with.
    fn mth(d: &[Hash]) -> Hash {
        match d.len() {
            0 => EMPTY_ROOT,
            1 => d[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&d[..k]), &mth(&d[k..]))
            }
        }
    }

    fn path(m: usize, d: &[Hash]) -> Vec<Hash> {
        if d.len() <= 1 {
            return Vec::new();
        }
        let k = split(d.len() as u64) as usize;
        if m < k {
            let mut p = path(m, &d[..k]);
            p.push(mth(&d[k..]));
            p
        } else {
            let mut p = path(m - k, &d[k..]);
            p.push(mth(&d[..k]));
            p
        }
    }

    fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
        if m == d.len() {
            return if b { Vec::new() } else { vec![mth(d)] };
        }
        let k = split(d.len() as u64) as usize;
        if m <= k {
            let mut p = subproof(m, &d[..k], b);
            p.push(mth(&d[k..]));
            p
        } else {
            let mut p = subproof(m - k, &d[k..], false);
            p.push(mth(&d[..k]));
            p
        }
    }

    const MAX: u64 = 64;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn every_proof_up_to_64_leaves_verifies_and_matches_the_rfc_definition() {
        let all = leaves(MAX);
        let tree = MerkleTree::from_leaves(all.iter().copied());
        for n in 1..=MAX {
            let d = &all[..n as usize];
            let root = tree.root_at(n).unwrap();
            assert_eq!(root, mth(d), "root {n}");
            for m in 0..n {
                let proof = tree.inclusion_proof(m, n).unwrap();
                assert_eq!(proof, path(m as usize, d), "PATH({m}, {n})");
                verify_inclusion(&d[m as usize], m, n, &proof, &root).unwrap();
            }
            for old in 0..=n {
                let proof = tree.consistency_proof(old, n).unwrap();
                if old > 0 && old < n {
                    assert_eq!(proof, subproof(old as usize, d, true), "PROOF({old}, {n})");
                }
                let old_root = tree.root_at(old).unwrap();
                verify_consistency(old, n, &old_root, &root, &proof).unwrap();
            }
        }
    }

    #[test]
    fn bad_requests_are_errors() {
        let tree = MerkleTree::from_leaves(leaves(5));
        assert_eq!(
            tree.inclusion_proof(5, 5),
            Err(ProofError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert_eq!(
            tree.inclusion_proof(0, 6),
            Err(ProofError::SizeOutOfRange { size: 6, max: 5 })
        );
        assert_eq!(
            tree.consistency_proof(4, 3),
            Err(ProofError::SizeOutOfRange { size: 4, max: 3 })
        );
        assert!(tree.root_at(6).is_err());
        assert_eq!(tree.leaf(5), None);
        let root = tree.root();
        let leaf = tree.leaf(1).unwrap();
        let proof = tree.inclusion_proof(1, 5).unwrap();
        assert_eq!(
            verify_inclusion(&leaf, 5, 5, &proof, &root),
            Err(ProofError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert!(matches!(
            verify_inclusion(&leaf, 1, 5, &proof[1..], &root),
            Err(ProofError::WrongLength { .. })
        ));
        let r3 = tree.root_at(3).unwrap();
        assert!(verify_consistency(5, 3, &root, &r3, &[]).is_err());
        assert_eq!(verify_consistency(3, 3, &r3, &r3, &[]), Ok(()));
        assert_eq!(
            verify_consistency(3, 3, &r3, &root, &[]),
            Err(ProofError::RootMismatch)
        );
        assert!(verify_consistency(3, 3, &r3, &r3, &[r3]).is_err());
        assert_eq!(verify_consistency(0, 5, &EMPTY_ROOT, &root, &[]), Ok(()));
        assert!(verify_consistency(0, 5, &EMPTY_ROOT, &root, &[r3]).is_err());
        assert!(verify_consistency(3, 5, &r3, &root, &[]).is_err());
        assert!(ProofError::RootMismatch.to_string().contains("root"));
    }

    fn flip(hash: &mut Hash, bit: usize) {
        hash[bit / 8 % 32] ^= 1 << (bit % 8);
    }

    proptest! {
        /// A changed proof hash, leaf, index, size or root never verifies.
        #[test]
        fn tampered_inclusion_proofs_fail(n in 1..=MAX, m in 0..MAX, which in 0usize..64, bit in 0usize..256) {
            let m = m % n;
            let all = leaves(n);
            let tree = MerkleTree::from_leaves(all.iter().copied());
            let root = tree.root();
            let proof = tree.inclusion_proof(m, n).unwrap();
            let leaf = all[m as usize];
            if !proof.is_empty() {
                let mut bad = proof.clone();
                flip(&mut bad[which % proof.len()], bit);
                prop_assert!(verify_inclusion(&leaf, m, n, &bad, &root).is_err());
                let mut short = proof.clone();
                short.pop();
                prop_assert!(verify_inclusion(&leaf, m, n, &short, &root).is_err());
            }
            let mut long = proof.clone();
            long.push(root);
            prop_assert!(verify_inclusion(&leaf, m, n, &long, &root).is_err());
            let mut bad_leaf = leaf;
            flip(&mut bad_leaf, bit);
            prop_assert!(verify_inclusion(&bad_leaf, m, n, &proof, &root).is_err());
            let mut bad_root = root;
            flip(&mut bad_root, bit);
            prop_assert!(verify_inclusion(&leaf, m, n, &proof, &bad_root).is_err());
            if n > 1 {
                let other = (m + 1 + which as u64 % (n - 1)) % n;
                prop_assert!(verify_inclusion(&leaf, other, n, &proof, &root).is_err());
            }
        }

        /// A changed proof hash or root, or a leaf changed in the old tree, never verifies.
        #[test]
        fn tampered_consistency_proofs_fail(n in 2..=MAX, old in 1..MAX, which in 0usize..64, bit in 0usize..256) {
            let old = 1 + old % (n - 1);
            let all = leaves(n);
            let tree = MerkleTree::from_leaves(all.iter().copied());
            let (r1, r2) = (tree.root_at(old).unwrap(), tree.root());
            let proof = tree.consistency_proof(old, n).unwrap();
            verify_consistency(old, n, &r1, &r2, &proof).unwrap();
            let mut bad = proof.clone();
            flip(&mut bad[which % proof.len()], bit);
            prop_assert!(verify_consistency(old, n, &r1, &r2, &bad).is_err());
            let mut bad_r1 = r1;
            flip(&mut bad_r1, bit);
            prop_assert!(verify_consistency(old, n, &bad_r1, &r2, &proof).is_err());
            let mut bad_r2 = r2;
            flip(&mut bad_r2, bit);
            prop_assert!(verify_consistency(old, n, &r1, &bad_r2, &proof).is_err());
            // The old tree rewritten: a leaf before `old` changed.
            let mut rewritten = all.clone();
            flip(&mut rewritten[which % old as usize], bit);
            let forged = MerkleTree::from_leaves(rewritten);
            let forged_proof = forged.consistency_proof(old, n).unwrap();
            prop_assert!(verify_consistency(old, n, &r1, &forged.root(), &forged_proof).is_err());
            let mut short = proof.clone();
            short.pop();
            prop_assert!(verify_consistency(old, n, &r1, &r2, &short).is_err());
        }
    }
}
