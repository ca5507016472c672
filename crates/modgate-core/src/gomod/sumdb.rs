//! Checksum-database request shapes (golang.org/x/mod/sumdb/tlog): tile paths, parsed and
//! printed canonically. Pure.

/// A tile: height `h`, level `l` (`-1` = data tile), index `n`, width `w` (`w == 1 << h` for a
/// full tile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub h: u32,
    pub l: i64,
    pub n: u64,
    pub w: u64,
}

impl Tile {
    /// Whether the tile is complete (and so immutable).
    pub fn is_full(&self) -> bool {
        self.w == 1u64 << self.h
    }

    /// `tile/H/L/NNN[.p/W]`, with N in `x`-prefixed three-digit groups.
    pub fn path(&self) -> String {
        let mut n = self.n;
        let mut n_str = format!("{:03}", n % 1000);
        while n >= 1000 {
            n /= 1000;
            n_str = format!("x{:03}/{n_str}", n % 1000);
        }
        let p = if self.is_full() {
            String::new()
        } else {
            format!(".p/{}", self.w)
        };
        let l = if self.l == -1 {
            "data".to_string()
        } else {
            self.l.to_string()
        };
        format!("tile/{}/{l}/{n_str}{p}", self.h)
    }

    /// `tlog.ParseTilePath`: only the canonical spelling is accepted.
    pub fn parse(path: &str) -> Option<Tile> {
        let mut f: Vec<&str> = path.split('/').collect();
        if f.len() < 4 || f[0] != "tile" {
            return None;
        }
        let h: u32 = f[1].parse().ok()?;
        let is_data = f[2] == "data";
        let l: i64 = if is_data { 0 } else { f[2].parse().ok()? };
        if !(1..=30).contains(&h) || l < 0 {
            return None;
        }
        let mut w = 1u64 << h;
        let last_owned;
        if let Some(dot_p) = f[f.len() - 2].strip_suffix(".p") {
            let ww: u64 = f[f.len() - 1].parse().ok()?;
            if ww == 0 || ww >= w {
                return None;
            }
            w = ww;
            last_owned = dot_p.to_string();
            let len = f.len();
            f.truncate(len - 1);
            let len = f.len();
            f[len - 1] = &last_owned;
        }
        let mut n: u64 = 0;
        for s in &f[3..] {
            let nn: u64 = s.strip_prefix('x').unwrap_or(s).parse().ok()?;
            if nn >= 1000 {
                return None;
            }
            n = n.checked_mul(1000)?.checked_add(nn)?;
        }
        let t = Tile {
            h,
            l: if is_data { -1 } else { l },
            n,
            w,
        };
        (t.path() == path).then_some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_paths() {
        let t = Tile::parse("tile/8/0/x004/822").unwrap();
        assert_eq!((t.h, t.l, t.n, t.w, t.is_full()), (8, 0, 4822, 256, true));
        let t = Tile::parse("tile/8/0/x001/x234/067.p/13").unwrap();
        assert_eq!((t.n, t.w, t.is_full()), (1234067, 13, false));
        let t = Tile::parse("tile/8/data/000").unwrap();
        assert_eq!(t.l, -1);
        assert_eq!(t.path(), "tile/8/data/000");
        for bad in [
            "tile/8/0/4822",
            "tile/8/0/x004/822.p/256",
            "tile/8/0/x004/822.p/0",
            "tile/8/-1/000",
            "tile/0/0/000",
            "tile/31/0/000",
            "tile/8/0/1000",
            "tile/8/0/+01",
            "tile/08/0/001",
            "tiles/8/0/001",
            "tile/8/0",
        ] {
            assert!(Tile::parse(bad).is_none(), "{bad}");
        }
    }
}
