//! A minimal reader of the kernel's BTF: struct member offsets by name.
//!
//! Only what [`KernelOffsets`] needs: find a struct or union by name, then a
//! member by name, looking inside anonymous struct/union members (the kernel
//! groups many fields that way) and following typedefs and qualifiers. The
//! BTF format is specified in the kernel's `Documentation/bpf/btf.rst`.

use std::{collections::HashMap, path::Path};

use monitor_common::KernelOffsets;

/// Errors reading BTF or resolving a field.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read.
    #[error("cannot read kernel BTF at {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data is not BTF or is cut short.
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    /// The running kernel has no struct of that name.
    #[error("the kernel's BTF has no struct `{0}`")]
    NoStruct(String),
    /// The struct exists but lacks the member.
    #[error("the kernel's BTF has no field `{0}` (this kernel's layout is not supported)")]
    NoField(String),
    /// The member is a bitfield, which the programs cannot read by offset.
    #[error("field `{0}` is a bitfield")]
    Bitfield(String),
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    type_id: u32,
    /// Offset in bits.
    bit_offset: u32,
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// Struct or union.
    Composite {
        name: u32,
        members: Vec<Member>,
    },
    /// Typedef, const, volatile, restrict, type tag: points at another type.
    Alias {
        type_id: u32,
    },
    /// An enum, with the name offsets of its enumerators.
    Enum {
        name: u32,
        values: Vec<u32>,
    },
    Other,
}

/// Parsed BTF: types and the string section.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Struct/union name offset -> type ids (named composites only).
    by_name: HashMap<String, Vec<u32>>,
}

fn u32_at(data: &[u8], off: usize) -> Result<u32, BtfError> {
    data.get(off..off + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or(BtfError::Malformed("type section ends inside a type"))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    /// Reads BTF from a file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses raw (little-endian) BTF.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 {
            return Err(BtfError::Malformed("shorter than its header"));
        }
        let magic = u16::from_le_bytes([data[0], data[1]]);
        if magic != BTF_MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or(BtfError::Malformed("section past the end of the data"))
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();

        // Type id 0 is `void`.
        let mut types = vec![Type::Other];
        let mut pos = 0;
        while pos < type_data.len() {
            let name = u32_at(type_data, pos)?;
            let info = u32_at(type_data, pos + 4)?;
            let size_or_type = u32_at(type_data, pos + 8)?;
            pos += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let at = pos + i * 12;
                        let offset = u32_at(type_data, at + 8)?;
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (offset & 0x00ff_ffff, offset >> 24)
                        } else {
                            (offset, 0)
                        };
                        members.push(Member {
                            name: u32_at(type_data, at)?,
                            type_id: u32_at(type_data, at + 4)?,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                    pos += vlen * 12;
                    Type::Composite { name, members }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias {
                        type_id: size_or_type,
                    }
                }
                KIND_INT | KIND_VAR | KIND_DECL_TAG => {
                    pos += 4;
                    Type::Other
                }
                KIND_ARRAY => {
                    pos += 12;
                    Type::Other
                }
                KIND_ENUM => {
                    let values = (0..vlen)
                        .map(|i| u32_at(type_data, pos + i * 8))
                        .collect::<Result<_, _>>()?;
                    pos += vlen * 8;
                    Type::Enum { name, values }
                }
                KIND_FUNC_PROTO => {
                    pos += vlen * 8;
                    Type::Other
                }
                KIND_DATASEC | KIND_ENUM64 => {
                    pos += vlen * 12;
                    Type::Other
                }
                KIND_PTR | KIND_FWD | KIND_FUNC | KIND_FLOAT => Type::Other,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            types.push(ty);
        }

        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (id, ty) in btf.types.iter().enumerate() {
            if let Type::Composite { name, .. } = ty
                && *name != 0
            {
                by_name
                    .entry(btf.string(*name).to_owned())
                    .or_default()
                    .push(id as u32);
            }
        }
        btf.by_name = by_name;
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let start = offset as usize;
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(Type::Alias { type_id }) => id = *type_id,
                _ => break,
            }
        }
        id
    }

    /// Bit offset of `member` within composite `id`, searching anonymous members.
    fn find_member(&self, id: u32, member: &str, depth: u32) -> Option<(u32, u32, u32)> {
        let Type::Composite { members, .. } = self.types.get(self.resolve(id) as usize)? else {
            return None;
        };
        for m in members {
            if m.name != 0 && self.string(m.name) == member {
                return Some((m.bit_offset, m.bitfield_size, m.type_id));
            }
        }
        if depth < 4 {
            for m in members.iter().filter(|m| m.name == 0) {
                if let Some((off, bits, ty)) = self.find_member(m.type_id, member, depth + 1) {
                    return Some((m.bit_offset + off, bits, ty));
                }
            }
        }
        None
    }

    /// True if the enum named `enum_name` has an enumerator `value`. The
    /// kernel's `enum bpf_func_id` lists exactly the BPF helpers it has, so
    /// this answers "does this kernel have helper X" without loading anything.
    pub fn has_enumerator(&self, enum_name: &str, value: &str) -> bool {
        self.types.iter().any(|ty| match ty {
            Type::Enum { name, values } => {
                self.string(*name) == enum_name && values.iter().any(|v| self.string(*v) == value)
            }
            _ => false,
        })
    }

    /// Byte offset of a dotted path `struct.member[.member...]`.
    pub fn offset_of(&self, path: &str) -> Result<u32, BtfError> {
        let mut parts = path.split('.');
        let struct_name = parts.next().unwrap_or_default();
        let ids = self
            .by_name
            .get(struct_name)
            .ok_or_else(|| BtfError::NoStruct(struct_name.to_owned()))?;
        // Several types may share a name (a forward declaration is not a
        // composite, but two composites can exist); take the first that has
        // the member.
        let members: Vec<&str> = parts.collect();
        'ids: for &id in ids {
            let mut ty = id;
            let mut bits = 0;
            for member in &members {
                match self.find_member(ty, member, 0) {
                    Some((off, 0, next)) => {
                        bits += off;
                        ty = next;
                    }
                    Some(_) => return Err(BtfError::Bitfield(path.to_owned())),
                    None => continue 'ids,
                }
            }
            if bits % 8 != 0 {
                return Err(BtfError::Bitfield(path.to_owned()));
            }
            return Ok(bits / 8);
        }
        Err(BtfError::NoField(path.to_owned()))
    }

    /// Resolves every field of [`KernelOffsets`].
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let mut offsets = KernelOffsets::default();
        for (name, path) in KernelOffsets::FIELDS {
            let value = self.offset_of(path)?;
            let known = offsets.set(name, value);
            debug_assert!(known, "{name} is a KernelOffsets field");
        }
        Ok(offsets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF with `struct outer { int a; union { int b; struct { int c; int d; }; }; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0".to_vec();
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (size 4, 32 bits)
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: anonymous struct { int c; int d; }
        push(&[0, KIND_STRUCT << 24 | 2, 8, s("c"), 1, 0, s("d"), 1, 32]);
        // 3: anonymous union { int b; struct 2; }
        push(&[0, KIND_UNION << 24 | 2, 8, s("b"), 1, 0, 0, 2, 0]);
        // 4: struct outer { int a; union 3; }
        push(&[
            s("outer"),
            KIND_STRUCT << 24 | 2,
            16,
            s("a"),
            1,
            0,
            0,
            3,
            64,
        ]);
        let mut data = Vec::new();
        data.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn finds_members_inside_anonymous_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.offset_of("outer.a").unwrap(), 0);
        assert_eq!(btf.offset_of("outer.b").unwrap(), 8);
        assert_eq!(btf.offset_of("outer.d").unwrap(), 12);
    }

    #[test]
    fn names_the_missing_struct_or_field() {
        let btf = Btf::parse(&sample()).unwrap();
        let err = btf.offset_of("outer.zz").unwrap_err().to_string();
        assert!(err.contains("outer.zz"), "{err}");
        let err = btf.offset_of("nope.a").unwrap_err().to_string();
        assert!(err.contains("`nope`"), "{err}");
    }

    #[test]
    fn rejects_truncated_data() {
        let mut data = sample();
        data.truncate(30);
        assert!(matches!(Btf::parse(&data), Err(BtfError::Malformed(_))));
        assert!(matches!(
            Btf::parse(b"nonsense"),
            Err(BtfError::Malformed(_))
        ));
    }

    #[test]
    fn resolves_every_offset_on_this_kernel() {
        // Reads the running kernel's BTF: present on every machine this agent
        // supports (CONFIG_DEBUG_INFO_BTF). Not a kernel-privileged test.
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("SKIPPED: {} is absent (kernel without BTF)", path.display());
            return;
        }
        let offsets = Btf::from_file(path).unwrap().kernel_offsets().unwrap();
        assert_ne!(offsets.task_tgid, 0);
        assert_ne!(offsets.mm_arg_end, offsets.mm_arg_start);
    }
}
