//! A read-only reader of SQLite database files, enough to list the rows of
//! one table: the file header, table b-trees (interior and leaf pages),
//! overflow chains and the record format. Written for untrusted input:
//! every offset is checked, every page is visited at most once, and
//! nothing is allocated beyond the file's own size.

/// Why a database could not be read.
pub type Error = String;

/// One column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

/// An opened database: the whole file in memory.
#[derive(Debug)]
pub struct Database<'a> {
    data: &'a [u8],
    page_size: usize,
    usable: usize,
    pages: usize,
}

impl<'a> Database<'a> {
    pub fn open(data: &'a [u8]) -> Result<Database<'a>, Error> {
        if data.len() < 100 || &data[..16] != b"SQLite format 3\0" {
            return Err("not an SQLite database".into());
        }
        let page_size = match u16::from_be_bytes([data[16], data[17]]) {
            1 => 65536,
            n if n >= 512 && n.is_power_of_two() => usize::from(n),
            n => return Err(format!("SQLite page size {n} is invalid")),
        };
        let reserved = usize::from(data[20]);
        let usable = page_size.checked_sub(reserved).filter(|u| *u >= 480).ok_or("SQLite reserved space is invalid")?;
        if u32::from_be_bytes([data[56], data[57], data[58], data[59]]) > 1 {
            return Err("SQLite text encoding other than UTF-8".into());
        }
        Ok(Database { data, page_size, usable, pages: data.len() / page_size })
    }

    fn page(&self, number: u32) -> Result<&'a [u8], Error> {
        let n = number as usize;
        if n == 0 || n > self.pages {
            return Err(format!("SQLite page {number} is outside the file"));
        }
        Ok(&self.data[(n - 1) * self.page_size..n * self.page_size])
    }

    /// The root page of a table, from the schema table.
    pub fn table_root(&self, name: &str) -> Result<Option<u32>, Error> {
        let mut root = None;
        self.scan(1, &mut |_, values| {
            if let [Value::Text(kind), Value::Text(n), _, Value::Integer(page), ..] = values.as_slice() {
                if kind == b"table" && n.eq_ignore_ascii_case(name.as_bytes()) {
                    root = u32::try_from(*page).ok();
                }
            }
            Ok(())
        })?;
        Ok(root)
    }

    /// Visit every row of the table b-tree rooted at `root`, in rowid order.
    pub fn scan(&self, root: u32, visit: &mut dyn FnMut(i64, Vec<Value>) -> Result<(), Error>) -> Result<(), Error> {
        let mut seen = vec![false; self.pages + 1];
        let mut stack = vec![root];
        // Depth-first, right child last so rows come in order.
        while let Some(number) = stack.pop() {
            let slot =
                seen.get_mut(number as usize).ok_or_else(|| format!("SQLite page {number} is outside the file"))?;
            if *slot {
                return Err(format!("SQLite page {number} is linked twice (a cycle)"));
            }
            *slot = true;
            let page = self.page(number)?;
            let base = if number == 1 { 100 } else { 0 };
            let header = page.get(base..base + 12).ok_or("truncated SQLite page")?;
            let kind = header[0];
            let cells = usize::from(u16::from_be_bytes([header[3], header[4]]));
            let header_len = match kind {
                0x0d => 8,
                0x05 => 12,
                _ => return Err(format!("SQLite page {number} is not a table b-tree page (type {kind})")),
            };
            let pointers = page.get(base + header_len..base + header_len + 2 * cells).ok_or("truncated SQLite page")?;
            let offsets: Vec<usize> =
                pointers.chunks_exact(2).map(|c| usize::from(u16::from_be_bytes([c[0], c[1]]))).collect();
            if kind == 0x05 {
                let right = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
                stack.push(right);
                for &off in offsets.iter().rev() {
                    let cell = page.get(off..off + 4).ok_or("SQLite cell outside its page")?;
                    stack.push(u32::from_be_bytes([cell[0], cell[1], cell[2], cell[3]]));
                }
                continue;
            }
            for off in offsets {
                let mut at = off;
                let payload_len = varint(page, &mut at)?;
                let rowid = varint(page, &mut at)? as i64;
                let payload = self.payload(page, at, payload_len, &mut seen)?;
                visit(rowid, record(&payload)?)?;
            }
        }
        Ok(())
    }

    /// A leaf cell's payload, following its overflow chain.
    fn payload(&self, page: &[u8], at: usize, len: u64, seen: &mut [bool]) -> Result<Vec<u8>, Error> {
        if len > self.data.len() as u64 {
            return Err("SQLite payload larger than the file".into());
        }
        let len = len as usize;
        let u = self.usable;
        let x = u - 35;
        let local = if len <= x {
            len
        } else {
            let m = ((u - 12) * 32 / 255) - 23;
            let k = m + ((len - m) % (u - 4));
            if k <= x {
                k
            } else {
                m
            }
        };
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(page.get(at..at + local).ok_or("SQLite cell outside its page")?);
        if local < len {
            let p = page.get(at + local..at + local + 4).ok_or("SQLite cell outside its page")?;
            let mut next = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
            while out.len() < len {
                let slot = seen.get_mut(next as usize).ok_or("SQLite overflow page outside the file")?;
                if *slot {
                    return Err(format!("SQLite overflow page {next} is linked twice (a cycle)"));
                }
                *slot = true;
                let ov = self.page(next)?;
                next = u32::from_be_bytes([ov[0], ov[1], ov[2], ov[3]]);
                let take = (len - out.len()).min(u - 4);
                out.extend_from_slice(&ov[4..4 + take]);
            }
        }
        Ok(out)
    }
}

fn varint(data: &[u8], at: &mut usize) -> Result<u64, Error> {
    let mut v: u64 = 0;
    for i in 0..9 {
        let b = *data.get(*at).ok_or("truncated SQLite varint")?;
        *at += 1;
        if i == 8 {
            return Ok((v << 8) | u64::from(b));
        }
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Ok(v)
}

/// Decode one record: a header of serial types, then the values.
fn record(payload: &[u8]) -> Result<Vec<Value>, Error> {
    let mut at = 0;
    let header_len = varint(payload, &mut at)? as usize;
    if header_len > payload.len() {
        return Err("SQLite record header past its payload".into());
    }
    let mut types = Vec::new();
    while at < header_len {
        types.push(varint(payload, &mut at)?);
    }
    let mut body = header_len;
    let mut out = Vec::with_capacity(types.len());
    for t in types {
        let int = |n: usize, body: &mut usize| -> Result<i64, Error> {
            let b = payload.get(*body..*body + n).ok_or("SQLite record value past its payload")?;
            *body += n;
            let mut v: i64 = if b[0] & 0x80 != 0 { -1 } else { 0 };
            for byte in b {
                v = (v << 8) | i64::from(*byte);
            }
            Ok(v)
        };
        out.push(match t {
            0 => Value::Null,
            1..=4 => Value::Integer(int(t as usize, &mut body)?),
            5 => Value::Integer(int(6, &mut body)?),
            6 => Value::Integer(int(8, &mut body)?),
            7 => Value::Real(f64::from_bits(int(8, &mut body)? as u64)),
            8 => Value::Integer(0),
            9 => Value::Integer(1),
            10 | 11 => return Err("SQLite record uses a reserved serial type".into()),
            n => {
                let len = ((n - 12) / 2) as usize;
                let bytes = payload.get(body..body + len).ok_or("SQLite record value past its payload")?.to_vec();
                body += len;
                if n % 2 == 0 {
                    Value::Blob(bytes)
                } else {
                    Value::Text(bytes)
                }
            }
        });
    }
    Ok(out)
}
