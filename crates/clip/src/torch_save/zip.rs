//! The zip container of `torch.save` archives: entries stored uncompressed, read by offset
//! (zip64 archives too); written with CRCs and a central directory, up to 4 GiB.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

#[derive(Clone)]
pub(super) struct Entry {
    name: String,
    /// Offset of the entry's local header.
    header: u64,
    pub(super) size: u64,
}

pub(super) struct Zip {
    file: File,
    entries: Vec<Entry>,
}

fn le16(b: &[u8], at: usize) -> u64 {
    u16::from_le_bytes([b[at], b[at + 1]]).into()
}

fn le32(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()).into()
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl Zip {
    pub(super) fn open(path: &Path) -> Result<Zip, String> {
        let mut file = File::open(path).map_err(|e| e.to_string())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        let tail_len = len.min(65_557 + 20);
        let mut tail = vec![0u8; tail_len as usize];
        file.seek(SeekFrom::Start(len - tail_len))
            .and_then(|_| file.read_exact(&mut tail))
            .map_err(|e| e.to_string())?;
        let eocd = (0..tail.len().saturating_sub(21))
            .rev()
            .find(|&i| tail[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
            .ok_or("not a zip archive (no end of central directory)")?;
        let mut count = le16(&tail, eocd + 10);
        let mut cd_size = le32(&tail, eocd + 12);
        let mut cd_offset = le32(&tail, eocd + 16);
        if cd_offset == 0xffff_ffff || count == 0xffff || cd_size == 0xffff_ffff {
            // Zip64: the locator sits right before the end record.
            let loc = eocd
                .checked_sub(20)
                .filter(|&l| tail[l..l + 4] == [0x50, 0x4b, 0x06, 0x07])
                .ok_or("zip64 archive without its locator")?;
            let mut rec = [0u8; 56];
            file.seek(SeekFrom::Start(le64(&tail, loc + 8)))
                .and_then(|_| file.read_exact(&mut rec))
                .map_err(|e| e.to_string())?;
            if rec[..4] != [0x50, 0x4b, 0x06, 0x06] {
                return Err("bad zip64 end of central directory".into());
            }
            count = le64(&rec, 32);
            cd_size = le64(&rec, 40);
            cd_offset = le64(&rec, 48);
        }
        if cd_offset.checked_add(cd_size).is_none_or(|end| end > len) {
            return Err("zip central directory lies outside the file".into());
        }
        let mut cd = vec![0u8; cd_size as usize];
        file.seek(SeekFrom::Start(cd_offset))
            .and_then(|_| file.read_exact(&mut cd))
            .map_err(|e| e.to_string())?;
        let mut entries = Vec::new();
        let mut at = 0usize;
        for _ in 0..count {
            if at + 46 > cd.len() || cd[at..at + 4] != [0x50, 0x4b, 0x01, 0x02] {
                return Err("bad zip central directory entry".into());
            }
            let method = le16(&cd, at + 10);
            let mut size = le32(&cd, at + 24);
            let compressed = le32(&cd, at + 20);
            let name_len = le16(&cd, at + 28) as usize;
            let extra_len = le16(&cd, at + 30) as usize;
            let comment_len = le16(&cd, at + 32) as usize;
            let mut header = le32(&cd, at + 42);
            let end = at + 46 + name_len + extra_len + comment_len;
            if end > cd.len() {
                return Err("bad zip central directory entry".into());
            }
            let name = String::from_utf8_lossy(&cd[at + 46..at + 46 + name_len]).into_owned();
            // Zip64 extra field: the 64-bit values of the fields that hold 0xffffffff.
            let mut extra = &cd[at + 46 + name_len..at + 46 + name_len + extra_len];
            while extra.len() >= 4 {
                let (id, n) = (le16(extra, 0), le16(extra, 2) as usize);
                let body = &extra[4..(4 + n).min(extra.len())];
                if id == 1 {
                    let mut i = 0;
                    let mut next = |v: &mut u64| {
                        if *v == 0xffff_ffff && i + 8 <= body.len() {
                            *v = le64(body, i);
                            i += 8;
                        }
                    };
                    let mut c = compressed;
                    next(&mut size);
                    next(&mut c);
                    next(&mut header);
                }
                extra = &extra[(4 + n).min(extra.len())..];
            }
            if method != 0 {
                return Err(format!("{name} is compressed (method {method}); torch.save stores entries uncompressed"));
            }
            entries.push(Entry { name, header, size });
            at = end;
        }
        Ok(Zip { file, entries })
    }

    /// The entry `<top folder>/<name>`.
    pub(super) fn find(&self, name: &str) -> Result<&Entry, String> {
        self.entries
            .iter()
            .find(|e| e.name.split_once('/').is_some_and(|(_, rest)| rest == name))
            .ok_or_else(|| format!("no {name} in the archive: not a torch.save file"))
    }

    pub(super) fn read_range(&mut self, entry: &Entry, len: u64) -> Result<Vec<u8>, String> {
        let mut local = [0u8; 30];
        self.file
            .seek(SeekFrom::Start(entry.header))
            .and_then(|_| self.file.read_exact(&mut local))
            .map_err(|e| e.to_string())?;
        if local[..4] != [0x50, 0x4b, 0x03, 0x04] {
            return Err(format!("{}: bad zip local header", entry.name));
        }
        let data = entry.header + 30 + le16(&local, 26) + le16(&local, 28);
        let mut bytes = vec![0u8; len as usize];
        self.file
            .seek(SeekFrom::Start(data))
            .and_then(|_| self.file.read_exact(&mut bytes))
            .map_err(|e| format!("{}: {e}", entry.name))?;
        Ok(bytes)
    }

    pub(super) fn read(&mut self, entry: &Entry) -> Result<Vec<u8>, String> {
        self.read_range(entry, entry.size)
    }
}

/// Writes stored (uncompressed) entries, each entry's data aligned to 64 bytes as torch's
/// own writer does (padding in the local header's extra field). No zip64: archives must
/// stay under 4 GiB (ViT-L/14 in f32 is 1.7 GB).
pub(super) struct ZipWriter<W: Write> {
    out: W,
    /// Bytes written so far.
    pos: u64,
    central: Vec<u8>,
    count: u16,
}

impl<W: Write> ZipWriter<W> {
    pub(super) fn new(out: W) -> Self {
        ZipWriter {
            out,
            pos: 0,
            central: Vec::new(),
            count: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.out.write_all(bytes).map_err(|e| e.to_string())?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    pub(super) fn add(&mut self, name: &str, data: &[u8]) -> Result<(), String> {
        let offset = self.pos;
        let base = offset as usize + 30 + name.len();
        let pad = (64 - (base + 4) % 64) % 64;
        let end = base + 4 + pad + data.len();
        if end as u64 >= u32::MAX as u64 || data.len() as u64 >= u32::MAX as u64 {
            return Err("archive over 4 GiB: not supported".into());
        }
        let crc = crc32(data);
        let fields = |out: &mut Vec<u8>| {
            out.extend_from_slice(&20u16.to_le_bytes()); // version needed
            out.extend_from_slice(&0u16.to_le_bytes()); // flags
            out.extend_from_slice(&0u16.to_le_bytes()); // stored
            out.extend_from_slice(&0u16.to_le_bytes()); // time
            out.extend_from_slice(&0x21u16.to_le_bytes()); // date 1980-01-01
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        };
        let mut local = vec![0x50, 0x4b, 0x03, 0x04];
        fields(&mut local);
        local.extend_from_slice(&((4 + pad) as u16).to_le_bytes());
        local.extend_from_slice(name.as_bytes());
        local.extend_from_slice(b"FB");
        local.extend_from_slice(&(pad as u16).to_le_bytes());
        local.resize(local.len() + pad, b'Z');
        self.write(&local)?;
        self.write(data)?;

        self.central.extend_from_slice(&[0x50, 0x4b, 0x01, 0x02]);
        self.central.extend_from_slice(&20u16.to_le_bytes()); // version made by
        fields(&mut self.central);
        self.central.extend_from_slice(&0u16.to_le_bytes()); // extra
        self.central.extend_from_slice(&0u16.to_le_bytes()); // comment
        self.central.extend_from_slice(&0u16.to_le_bytes()); // disk
        self.central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        self.central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        self.central
            .extend_from_slice(&(offset as u32).to_le_bytes());
        self.central.extend_from_slice(name.as_bytes());
        self.count = self
            .count
            .checked_add(1)
            .filter(|&c| c < u16::MAX)
            .ok_or("too many zip entries")?;
        Ok(())
    }

    pub(super) fn finish(mut self) -> Result<(), String> {
        let cd_offset = self.pos;
        if cd_offset + self.central.len() as u64 >= u32::MAX as u64 {
            return Err("archive over 4 GiB: not supported".into());
        }
        let mut end = std::mem::take(&mut self.central);
        let cd_len = end.len() as u32;
        end.extend_from_slice(&[0x50, 0x4b, 0x05, 0x06]);
        end.extend_from_slice(&0u16.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        end.extend_from_slice(&self.count.to_le_bytes());
        end.extend_from_slice(&self.count.to_le_bytes());
        end.extend_from_slice(&cd_len.to_le_bytes());
        end.extend_from_slice(&(cd_offset as u32).to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        self.write(&end)?;
        self.out.flush().map_err(|e| e.to_string())
    }
}

fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_known_input() {
        // The standard check value of CRC-32 (IEEE).
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
