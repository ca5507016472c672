//! The checksum database's transparent log, ported from golang.org/x/mod/sumdb/tlog: RFC 6962
//! record and node hashes, the stored-hash index, record (inclusion) and tree (consistency)
//! proofs, and reading hashes from tiles so that every hash used is authenticated against a
//! signed tree hash (`tileHashReader`).
//!
//! Sans I/O: [`TilePlan::new`] says which tiles a set of hashes needs; the caller fetches them
//! and [`TilePlan::read`] authenticates the tiles and returns the hashes.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::sumdb::Tile;

/// Bytes in a hash.
pub const HASH_SIZE: usize = 32;

/// A SHA-256 hash in the log.
pub type Hash = [u8; HASH_SIZE];

/// A tree: its size (number of records) and root hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tree {
    pub n: u64,
    pub hash: Hash,
}

/// Why a proof or a tile does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlogError {
    #[error("invalid transparency proof")]
    ProofFailed,
    #[error("invalid inputs: {0}")]
    Inputs(&'static str),
    #[error("tile {tile} has {got} bytes, want {want}")]
    TileSize {
        tile: String,
        got: usize,
        want: usize,
    },
    #[error("downloaded inconsistent tile")]
    InconsistentTile,
    #[error("index {index} is not in tile {tile}")]
    NotInTile { index: u64, tile: String },
}

/// `RecordHash`: SHA-256(0x00 ‖ data).
pub fn record_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `NodeHash`: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// `maxpow2`: the largest power of two below `n`, and its log.
fn maxpow2(n: u64) -> (u64, u32) {
    let mut l = 0u32;
    while (1u64 << (l + 1)) < n {
        l += 1;
    }
    (1 << l, l)
}

/// `StoredHashIndex`: the dense storage index of the hash at (`level`, `n`).
pub fn stored_hash_index(level: u32, mut n: u64) -> u64 {
    for _ in 0..level {
        n = 2 * n + 1;
    }
    let mut i = 0u64;
    while n > 0 {
        i += n;
        n >>= 1;
    }
    i + level as u64
}

/// `SplitStoredHashIndex`: the inverse of [`stored_hash_index`].
pub fn split_stored_hash_index(index: u64) -> (u32, u64) {
    let mut n = index / 2;
    let mut index_n = stored_hash_index(0, n);
    debug_assert!(index_n <= index);
    loop {
        let x = index_n + 1 + (n + 1).trailing_zeros() as u64;
        if x > index {
            break;
        }
        n += 1;
        index_n = x;
    }
    let level = (index - index_n) as u32;
    (level, n >> level)
}

fn sub_tree_index(mut lo: u64, hi: u64, need: &mut Vec<u64>) {
    while lo < hi {
        let (k, level) = maxpow2(hi - lo + 1);
        debug_assert!(lo & (k - 1) == 0);
        need.push(stored_hash_index(level, lo >> level));
        lo += k;
    }
}

fn sub_tree_hash(mut lo: u64, hi: u64, hashes: &[Hash]) -> (Hash, &[Hash]) {
    let mut num = 0;
    while lo < hi {
        let (k, _) = maxpow2(hi - lo + 1);
        num += 1;
        lo += k;
    }
    let mut h = hashes[num - 1];
    for i in (0..num - 1).rev() {
        h = node_hash(&hashes[i], &h);
    }
    (h, &hashes[num..])
}

/// The storage indexes of the hashes that prove record `n` in a tree of size `t`.
pub fn record_proof_indexes(t: u64, n: u64) -> Vec<u64> {
    let mut need = vec![];
    leaf_proof_index(0, t, n, &mut need);
    need
}

fn leaf_proof_index(lo: u64, hi: u64, n: u64, need: &mut Vec<u64>) {
    if lo + 1 == hi {
        return;
    }
    let (k, _) = maxpow2(hi - lo);
    if n < lo + k {
        leaf_proof_index(lo, lo + k, n, need);
        sub_tree_index(lo + k, hi, need);
    } else {
        sub_tree_index(lo, lo + k, need);
        leaf_proof_index(lo + k, hi, n, need);
    }
}

/// `ProveRecord` from the hashes at [`record_proof_indexes`]`(t, n)`.
pub fn record_proof(t: u64, n: u64, hashes: &[Hash]) -> Vec<Hash> {
    fn go(lo: u64, hi: u64, n: u64, hashes: &[Hash]) -> (Vec<Hash>, &[Hash]) {
        if lo + 1 == hi {
            return (vec![], hashes);
        }
        let (k, _) = maxpow2(hi - lo);
        let (mut p, th, rest);
        if n < lo + k {
            let (p1, r1) = go(lo, lo + k, n, hashes);
            let (t1, r2) = sub_tree_hash(lo + k, hi, r1);
            (p, th, rest) = (p1, t1, r2);
        } else {
            let (t1, r1) = sub_tree_hash(lo, lo + k, hashes);
            let (p1, r2) = go(lo + k, hi, n, r1);
            (p, th, rest) = (p1, t1, r2);
        }
        p.push(th);
        (p, rest)
    }
    go(0, t, n, hashes).0
}

/// `CheckRecord`: whether `proof` shows that the tree of size `t` with hash `th` has record
/// `n` with hash `h`.
pub fn check_record(proof: &[Hash], t: u64, th: &Hash, n: u64, h: &Hash) -> Result<(), TlogError> {
    if n >= t {
        return Err(TlogError::Inputs("record index not below tree size"));
    }
    fn run(p: &[Hash], lo: u64, hi: u64, n: u64, leaf: &Hash) -> Result<Hash, TlogError> {
        if lo + 1 == hi {
            return if p.is_empty() {
                Ok(*leaf)
            } else {
                Err(TlogError::ProofFailed)
            };
        }
        let (last, rest) = p.split_last().ok_or(TlogError::ProofFailed)?;
        let (k, _) = maxpow2(hi - lo);
        if n < lo + k {
            Ok(node_hash(&run(rest, lo, lo + k, n, leaf)?, last))
        } else {
            Ok(node_hash(last, &run(rest, lo + k, hi, n, leaf)?))
        }
    }
    if run(proof, 0, t, n, h)? == *th {
        Ok(())
    } else {
        Err(TlogError::ProofFailed)
    }
}

/// The storage indexes of the hashes that prove a tree of size `t` extends one of size `n`.
pub fn tree_proof_indexes(t: u64, n: u64) -> Vec<u64> {
    fn go(lo: u64, hi: u64, n: u64, need: &mut Vec<u64>) {
        if n == hi {
            if lo != 0 {
                sub_tree_index(lo, hi, need);
            }
            return;
        }
        let (k, _) = maxpow2(hi - lo);
        if n <= lo + k {
            go(lo, lo + k, n, need);
            sub_tree_index(lo + k, hi, need);
        } else {
            sub_tree_index(lo, lo + k, need);
            go(lo + k, hi, n, need);
        }
    }
    let mut need = vec![];
    go(0, t, n, &mut need);
    need
}

/// `ProveTree` from the hashes at [`tree_proof_indexes`]`(t, n)`.
pub fn tree_proof(t: u64, n: u64, hashes: &[Hash]) -> Vec<Hash> {
    fn go(lo: u64, hi: u64, n: u64, hashes: &[Hash]) -> (Vec<Hash>, &[Hash]) {
        if n == hi {
            if lo == 0 {
                return (vec![], hashes);
            }
            let (th, rest) = sub_tree_hash(lo, hi, hashes);
            return (vec![th], rest);
        }
        let (k, _) = maxpow2(hi - lo);
        let (mut p, th, rest);
        if n <= lo + k {
            let (p1, r1) = go(lo, lo + k, n, hashes);
            let (t1, r2) = sub_tree_hash(lo + k, hi, r1);
            (p, th, rest) = (p1, t1, r2);
        } else {
            let (t1, r1) = sub_tree_hash(lo, lo + k, hashes);
            let (p1, r2) = go(lo + k, hi, n, r1);
            (p, th, rest) = (p1, t1, r2);
        }
        p.push(th);
        (p, rest)
    }
    go(0, t, n, hashes).0
}

/// `CheckTree`: whether `proof` shows that the tree of size `t` with hash `th` contains as a
/// prefix the tree of size `n` with hash `h`.
pub fn check_tree(proof: &[Hash], t: u64, th: &Hash, n: u64, h: &Hash) -> Result<(), TlogError> {
    if n < 1 || n > t {
        return Err(TlogError::Inputs("old tree size not in 1..=new size"));
    }
    fn run(p: &[Hash], lo: u64, hi: u64, n: u64, old: &Hash) -> Result<(Hash, Hash), TlogError> {
        if n == hi {
            if lo == 0 {
                return if p.is_empty() {
                    Ok((*old, *old))
                } else {
                    Err(TlogError::ProofFailed)
                };
            }
            return match p {
                [one] => Ok((*one, *one)),
                _ => Err(TlogError::ProofFailed),
            };
        }
        let (last, rest) = p.split_last().ok_or(TlogError::ProofFailed)?;
        let (k, _) = maxpow2(hi - lo);
        if n <= lo + k {
            let (oh, th) = run(rest, lo, lo + k, n, old)?;
            Ok((oh, node_hash(&th, last)))
        } else {
            let (oh, th) = run(rest, lo + k, hi, n, old)?;
            Ok((node_hash(last, &oh), node_hash(last, &th)))
        }
    }
    let (h2, th2) = run(proof, 0, t, n, h)?;
    if th2 == *th && h2 == *h {
        Ok(())
    } else {
        Err(TlogError::ProofFailed)
    }
}

/// `tileForIndex`: the narrowest tile of height `h` holding stored hash `index`, and the byte
/// range of the hashes that make it up.
fn tile_for_index(h: u32, index: u64) -> (Tile, usize, usize) {
    let (mut level, n) = split_stored_hash_index(index);
    let l = level / h;
    level -= l * h;
    let tn = (n << level) >> h;
    let within = n - ((tn << h) >> level);
    let w = (within + 1) << level;
    let t = Tile {
        h,
        l: l as i64,
        n: tn,
        w,
    };
    (
        t,
        (within << level) as usize * HASH_SIZE,
        ((within + 1) << level) as usize * HASH_SIZE,
    )
}

/// `tileHash`: the subtree hash of the hashes in `data`.
fn tile_hash(data: &[u8]) -> Hash {
    if data.len() == HASH_SIZE {
        return data.try_into().expect("one hash");
    }
    let half = data.len() / 2;
    node_hash(&tile_hash(&data[..half]), &tile_hash(&data[half..]))
}

/// `HashFromTile`: the hash at `index` from tile `t` (that index's tile or a wider one).
fn hash_from_tile(t: &Tile, data: &[u8], index: u64) -> Result<Hash, TlogError> {
    let (t1, start, end) = tile_for_index(t.h, index);
    if t.l != t1.l || t.n != t1.n || t.w < t1.w || data.len() < end {
        return Err(TlogError::NotInTile {
            index,
            tile: t.path(),
        });
    }
    Ok(tile_hash(&data[start..end]))
}

/// `tileParent`: `t`'s `k`-th parent tile in a tree of size `n`, or `None`.
fn tile_parent(t: &Tile, k: u32, n: u64) -> Option<Tile> {
    let mut p = *t;
    p.l += k as i64;
    p.n >>= k * p.h;
    p.w = 1 << p.h;
    let max = n >> (p.l as u32 * p.h);
    if (p.n << p.h) + p.w >= max {
        if (p.n << p.h) >= max {
            return None;
        }
        p.w = max - (p.n << p.h);
    }
    Some(p)
}

/// The tiles needed to read a set of hashes of a tree with authentication, in the order
/// `tileHashReader` fetches them: first those that recompute the tree hash, then, for each
/// hash, its tile and the parents up to one already planned.
#[derive(Debug, Clone)]
pub struct TilePlan {
    tree: Tree,
    height: u32,
    tiles: Vec<Tile>,
    order: HashMap<(i64, u64, u64), usize>,
    tree_indexes: Vec<u64>,
    tree_tiles: Vec<usize>,
    indexes: Vec<u64>,
    index_tiles: Vec<usize>,
}

fn key(t: &Tile) -> (i64, u64, u64) {
    (t.l, t.n, t.w)
}

impl TilePlan {
    /// Plans reading the hashes at `indexes` of `tree` from tiles of height `height`.
    pub fn new(tree: Tree, height: u32, indexes: &[u64]) -> Result<TilePlan, TlogError> {
        let mut plan = TilePlan {
            tree,
            height,
            tiles: vec![],
            order: HashMap::new(),
            tree_indexes: vec![],
            tree_tiles: vec![],
            indexes: indexes.to_vec(),
            index_tiles: vec![],
        };
        if tree.n == 0 {
            return Err(TlogError::Inputs("empty tree"));
        }
        sub_tree_index(0, tree.n, &mut plan.tree_indexes);
        for &x in &plan.tree_indexes.clone() {
            let (t, _, _) = tile_for_index(height, x);
            let t = tile_parent(&t, 0, tree.n).ok_or(TlogError::Inputs("index not in tree"))?;
            let i = plan.add(t);
            plan.tree_tiles.push(i);
        }
        for &x in indexes {
            if x >= stored_hash_index(0, tree.n) {
                return Err(TlogError::Inputs("index not in tree"));
            }
            let (t, _, _) = tile_for_index(height, x);
            let mut k = 0;
            let found = loop {
                match tile_parent(&t, k, tree.n) {
                    Some(p) if plan.order.contains_key(&key(&p)) => break plan.order[&key(&p)],
                    Some(_) => k += 1,
                    None => return Err(TlogError::Inputs("lost parent tile")),
                }
            };
            if k == 0 {
                plan.index_tiles.push(found);
                continue;
            }
            let mut own = found;
            for kk in (0..k).rev() {
                let p = tile_parent(&t, kk, tree.n).expect("walked up through it");
                if p.w != 1 << p.h {
                    return Err(TlogError::Inputs("a tile with a parent must be full"));
                }
                own = plan.add(p);
            }
            plan.index_tiles.push(own);
        }
        Ok(plan)
    }

    fn add(&mut self, t: Tile) -> usize {
        if let Some(&i) = self.order.get(&key(&t)) {
            return i;
        }
        self.order.insert(key(&t), self.tiles.len());
        self.tiles.push(t);
        self.tiles.len() - 1
    }

    /// The tiles to fetch, in order.
    pub fn tiles(&self) -> &[Tile] {
        &self.tiles
    }

    /// Authenticates `data` (one entry per [`TilePlan::tiles`], each exactly `w` hashes)
    /// against the tree hash and returns the planned hashes.
    pub fn read(&self, data: &[Vec<u8>]) -> Result<Vec<Hash>, TlogError> {
        if data.len() != self.tiles.len() {
            return Err(TlogError::Inputs("one data entry per tile"));
        }
        for (t, d) in self.tiles.iter().zip(data) {
            let want = t.w as usize * HASH_SIZE;
            if d.len() != want {
                return Err(TlogError::TileSize {
                    tile: t.path(),
                    got: d.len(),
                    want,
                });
            }
        }
        let at = |i: usize, x: u64| hash_from_tile(&self.tiles[i], &data[i], x);
        let last = self.tree_indexes.len() - 1;
        let mut th = at(self.tree_tiles[last], self.tree_indexes[last])?;
        for i in (0..last).rev() {
            th = node_hash(&at(self.tree_tiles[i], self.tree_indexes[i])?, &th);
        }
        if th != self.tree.hash {
            return Err(TlogError::InconsistentTile);
        }
        let first_child = self
            .tree_tiles
            .iter()
            .max()
            .map(|m| m + 1)
            .unwrap_or_default();
        for i in first_child..self.tiles.len() {
            let t = &self.tiles[i];
            let p = tile_parent(t, 1, self.tree.n).ok_or(TlogError::InconsistentTile)?;
            let j = *self
                .order
                .get(&key(&p))
                .ok_or(TlogError::InconsistentTile)?;
            let h = hash_from_tile(&p, &data[j], stored_hash_index(p.l as u32 * p.h, t.n))?;
            if h != tile_hash(&data[i]) {
                return Err(TlogError::InconsistentTile);
            }
        }
        self.indexes
            .iter()
            .zip(&self.index_tiles)
            .map(|(&x, &i)| at(i, x))
            .collect()
    }

    /// The tile height planned for.
    pub fn height(&self) -> u32 {
        self.height
    }
}

/// The server side of a log: every stored hash of the records appended so far, in x/mod's
/// dense layout ([`stored_hash_index`]), in memory (about 64 bytes per record).
#[derive(Debug, Clone, Default)]
pub struct HashLog {
    stored: Vec<Hash>,
    n: u64,
}

impl HashLog {
    /// Records in the log.
    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Appends a record (`StoredHashes`); returns its id.
    pub fn append(&mut self, data: &[u8]) -> u64 {
        let n = self.n;
        let mut h = record_hash(data);
        self.stored.push(h);
        for i in 0..(n + 1).trailing_zeros() {
            let old = self.stored[stored_hash_index(i, (n >> i) - 1) as usize];
            h = node_hash(&old, &h);
            self.stored.push(h);
        }
        debug_assert_eq!(self.stored.len() as u64, stored_hash_index(0, n + 1));
        self.n += 1;
        n
    }

    /// The hashes at storage `indexes` (each below the log's size).
    pub fn hashes(&self, indexes: &[u64]) -> Vec<Hash> {
        indexes.iter().map(|&i| self.stored[i as usize]).collect()
    }

    /// The tree of the first `n` records (`TreeHash`); `None` beyond the log.
    pub fn tree(&self, n: u64) -> Option<Tree> {
        if n > self.n {
            return None;
        }
        if n == 0 {
            return Some(Tree {
                n,
                hash: [0; HASH_SIZE],
            });
        }
        let mut idx = vec![];
        sub_tree_index(0, n, &mut idx);
        let (hash, _) = sub_tree_hash(0, n, &self.hashes(&idx));
        Some(Tree { n, hash })
    }

    /// A hash tile as served for the tree of size `n` (`ReadTileData`): `None` for data
    /// tiles and for tiles (or widths) that tree does not have.
    pub fn tile(&self, t: &Tile, n: u64) -> Option<Vec<u8>> {
        if t.l < 0 || n > self.n {
            return None;
        }
        let level = t.h.checked_mul(u32::try_from(t.l).ok()?)?;
        let have = n.checked_shr(level).unwrap_or(0);
        let start = t.n.checked_mul(1u64.checked_shl(t.h)?)?;
        if start.checked_add(t.w)? > have {
            return None;
        }
        Some(
            (0..t.w)
                .flat_map(|i| self.stored[stored_hash_index(level, start + i) as usize])
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u64) -> Vec<u8> {
        format!("record {i}\n").into_bytes()
    }

    #[test]
    fn stored_hash_indexes_round_trip() {
        for level in 0..10 {
            for n in 0..200 {
                let i = stored_hash_index(level, n);
                assert_eq!(split_stored_hash_index(i), (level, n));
            }
        }
        // x/mod's table: the first stored hashes of a log.
        assert_eq!(
            (0..8).map(|n| stored_hash_index(0, n)).collect::<Vec<_>>(),
            [0, 1, 3, 4, 7, 8, 10, 11]
        );
    }

    #[test]
    fn record_and_tree_proofs_hold_and_tampering_fails() {
        let mut log = HashLog::default();
        let mut trees = vec![];
        for i in 0..70 {
            log.append(&record(i));
            trees.push(log.tree(log.len()).unwrap());
        }
        for t in [1u64, 2, 3, 7, 8, 9, 33, 64, 70] {
            let tree = trees[t as usize - 1];
            for n in 0..t {
                let p = record_proof(t, n, &log.hashes(&record_proof_indexes(t, n)));
                let h = record_hash(&record(n));
                check_record(&p, t, &tree.hash, n, &h).unwrap();
                let other = record_hash(b"forged\n");
                assert_eq!(
                    check_record(&p, t, &tree.hash, n, &other),
                    Err(TlogError::ProofFailed)
                );
            }
            for old in 1..=t {
                let p = tree_proof(t, old, &log.hashes(&tree_proof_indexes(t, old)));
                let oh = trees[old as usize - 1].hash;
                check_tree(&p, t, &tree.hash, old, &oh).unwrap();
                let mut forged = oh;
                forged[0] ^= 1;
                assert!(check_tree(&p, t, &tree.hash, old, &forged).is_err());
            }
        }
    }

    #[test]
    fn hashes_read_from_tiles_are_authenticated() {
        let mut log = HashLog::default();
        for i in 0..600 {
            log.append(&record(i));
        }
        let tree = log.tree(log.len()).unwrap();
        // Height 2, so that 600 records span several levels of tiles.
        for n in [0u64, 5, 257, 599] {
            let idx = record_proof_indexes(tree.n, n);
            let plan = TilePlan::new(tree, 2, &idx).unwrap();
            let data: Vec<Vec<u8>> = plan
                .tiles()
                .iter()
                .map(|t| log.tile(t, tree.n).unwrap())
                .collect();
            let hashes = plan.read(&data).unwrap();
            assert_eq!(hashes, log.hashes(&idx));
            let p = record_proof(tree.n, n, &hashes);
            check_record(&p, tree.n, &tree.hash, n, &record_hash(&record(n))).unwrap();
            // Any flipped byte in any tile is caught.
            for i in 0..data.len() {
                let mut bad = data.clone();
                bad[i][3] ^= 0x40;
                assert!(plan.read(&bad).is_err(), "tile {i} for record {n}");
            }
        }
    }

    #[test]
    fn the_log_serves_only_tiles_its_tree_has() {
        let mut log = HashLog::default();
        for i in 0..300 {
            log.append(&record(i));
        }
        let t = |l: i64, n: u64, w: u64| Tile { h: 8, l, n, w };
        assert_eq!(log.tile(&t(0, 0, 256), 300).unwrap().len(), 256 * HASH_SIZE);
        assert_eq!(log.tile(&t(0, 1, 44), 300).unwrap().len(), 44 * HASH_SIZE);
        assert!(log.tile(&t(0, 1, 45), 300).is_none());
        assert!(log.tile(&t(0, 1, 44), 299).is_none());
        assert_eq!(log.tile(&t(1, 0, 1), 300).unwrap().len(), HASH_SIZE);
        assert!(log.tile(&t(1, 0, 2), 300).is_none());
        assert!(log.tile(&t(-1, 0, 256), 300).is_none());
        // An index whose start does not fit in 64 bits is no tile (not tile 0 wrapped round).
        assert!(log.tile(&t(0, 1 << 60, 1), 300).is_none());
        assert!(log.tree(301).is_none());
        assert_eq!(log.tree(0).unwrap().hash, [0; HASH_SIZE]);
        // The tree of a prefix is the tree the log had then.
        let mut short = HashLog::default();
        for i in 0..123 {
            short.append(&record(i));
        }
        assert_eq!(log.tree(123), short.tree(123));
    }

    /// Tree hashes and tiles of 1,000 records, as golang.org/x/mod/sumdb/tlog computes them
    /// (`StoredHashes`, `TreeHash`, `ReadTileData`; Debian's golang-golang-x-mod-dev, Go 1.19):
    /// the server side checked against Go's own, not against this port's proof reader.
    #[test]
    fn the_log_matches_the_go_implementation() {
        use base64::Engine;
        let mut log = HashLog::default();
        for i in 0..1000 {
            log.append(&record(i));
        }
        for (n, want) in [
            (1, "hH2/O6WqM8SXbRrP04wkRcdxBnXjSED3frqPG1Slmqo="),
            (2, "iDYylbHW0Tfc8TPv9Zsm3tnGSeG45mXMQ+Eqym5W/aw="),
            (3, "NN1lugKBoC5d4485FURI7Stm1fqIQOgKwtCU4SF6ADo="),
            (255, "DYtrqFTOKivRQRFhRCS13foIOKxFJUEPmRcpB9pPDO0="),
            (256, "YM4q9B2yxJjQzI3wjS28QSe5lhVenLORq/0HtRJm3q4="),
            (257, "QdJ5V+Qnf4iWgvEVR9xxpPDgVMkVzgEbYXI1DVJk2Kg="),
            (1000, "/OM0wh4QVBZH2yGIJAxlVIH0IqehjKLfQ+JUXW3B0iM="),
        ] {
            let got = base64::engine::general_purpose::STANDARD.encode(log.tree(n).unwrap().hash);
            assert_eq!(got, want, "tree {n}");
        }
        for (path, want) in [
            (
                "tile/8/0/003.p/232",
                "0d2c620b232fa4b12e9e07c305a3b61ef58a55c741ff06b183481c42bc0d0d1f",
            ),
            (
                "tile/8/1/000.p/3",
                "060286a440ed69b420dfe21bf3fe230aadb32f97924ed8b0f9eb3c8e9afdc744",
            ),
            (
                "tile/2/3/003.p/3",
                "625dabc2dec35f75bc96111edd4b48985653b726a5bcab04d4430f4266d9980e",
            ),
            (
                "tile/2/4/000.p/3",
                "060286a440ed69b420dfe21bf3fe230aadb32f97924ed8b0f9eb3c8e9afdc744",
            ),
        ] {
            let t = Tile::parse(path).unwrap();
            let data = log.tile(&t, 1000).unwrap();
            let got: String = Sha256::digest(&data)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(got, want, "{path}");
        }
    }
}
