//! The initramfs for a kernel whose virtio drivers are modules: a gzip'd
//! cpio "newc" archive with a static busybox, the modules, and an `/init`
//! that loads them, mounts the root device and switches to it.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use object::elf::{FileHeader32, FileHeader64, PT_INTERP};
use object::read::elf::{FileHeader, ProgramHeader};
use object::{Endianness, FileKind};

use super::{io_err, ImportError};

/// Where the initramfs keeps the module list, one name a line, in load order.
pub const LOAD_ORDER_PATH: &str = "lib/modules/load-order";

/// Busybox applets the init script calls, linked in `/bin`.
const APPLETS: &[&str] = &["sh", "mount", "umount", "insmod", "switch_root", "sleep", "cat", "mkdir", "findfs"];

/// The `/init` script. Module names come from [`LOAD_ORDER_PATH`]; the root
/// device, its type, the init and `rw`/`ro` from the kernel command line.
pub const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
# banger initramfs: load the virtio modules, mount the root, switch to it.
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

fail() {
    echo "banger-init: $*"
    echo "banger-init: dropping to a shell"
    exec sh
}

while read -r module; do
    [ -n "$module" ] || continue
    if ! out=$(insmod "/lib/modules/$module.ko" 2>&1); then
        case "$out" in
            *"File exists"*) ;;
            *) echo "banger-init: insmod $module: $out" ;;
        esac
    fi
done </lib/modules/load-order

root=/dev/vda
fstype=ext4
init=/sbin/init
mode=ro
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${arg#root=}" ;;
        rootfstype=*) fstype="${arg#rootfstype=}" ;;
        init=*) init="${arg#init=}" ;;
        rw) mode=rw ;;
        ro) mode=ro ;;
    esac
done

device=
tries=0
while [ "$tries" -lt 100 ]; do
    case "$root" in
        LABEL=*|UUID=*) device=$(findfs "$root" 2>/dev/null) ;;
        *) [ -b "$root" ] && device="$root" ;;
    esac
    [ -n "$device" ] && break
    sleep 0.1
    tries=$((tries + 1))
done
[ -n "$device" ] || fail "root device $root did not appear within 10 s"

mkdir -p /newroot
mount -t "$fstype" -o "$mode" "$device" /newroot || fail "cannot mount $device ($fstype, $mode) on /newroot"

# A failed exec would end PID 1 (a kernel panic): check first, keep the shell.
[ -e "/newroot$init" ] || [ -L "/newroot$init" ] || fail "no $init in the root filesystem"

[ -d /newroot/dev ] && mount -o move /dev /newroot/dev
for fs in proc sys; do
    if [ -d "/newroot/$fs" ]; then
        mount -o move "/$fs" "/newroot/$fs"
    else
        umount "/$fs"
    fi
done

exec switch_root /newroot "$init"
"#;

/// Writes cpio "newc" archives (the format the kernel unpacks).
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
}

/// Linux `S_IF*` file type bits.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl<W: Write> CpioWriter<W> {
    /// Starts an archive written to `out`.
    pub fn new(out: W) -> Self {
        Self { out, next_ino: 1 }
    }

    /// Adds a directory; `path` has no leading `/`.
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | perm, 2, (0, 0), &[])
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | perm, 1, (0, 0), data)
    }

    /// Adds a symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// Adds a character device node.
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | perm, 1, (major, minor), &[])
    }

    /// Writes the `TRAILER!!!` entry and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.next_ino = 0;
        self.raw_entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        self.raw_entry(path, mode, nlink, rdev, data)?;
        self.next_ino += 1;
        Ok(())
    }

    fn raw_entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, format!("{path} is too large for cpio"));
        let size = u32::try_from(data.len()).map_err(|_| too_big())?;
        let name_size = u32::try_from(path.len() + 1).map_err(|_| too_big())?;
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        let fields = [self.next_ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, name_size, 0];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for field in fields {
            header.push_str(&format!("{field:08X}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(path.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + path.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> io::Result<()> {
        let zeros = [0u8; 3];
        self.out.write_all(&zeros[..(4 - len % 4) % 4])
    }
}

/// Whether an ELF file names a program interpreter (is dynamically linked).
/// `None` when it is not a readable ELF: the file may come from anywhere, so
/// `object` checks every offset.
pub fn elf_is_dynamic(elf: &[u8]) -> Option<bool> {
    fn interp<Elf: FileHeader<Endian = Endianness>>(data: &[u8]) -> Option<bool> {
        let header = Elf::parse(data).ok()?;
        let endian = header.endian().ok()?;
        Some(header.program_headers(endian, data).ok()?.iter().any(|ph| ph.p_type(endian) == PT_INTERP))
    }
    match FileKind::parse(elf).ok()? {
        FileKind::Elf32 => interp::<FileHeader32<Endianness>>(elf),
        FileKind::Elf64 => interp::<FileHeader64<Endianness>>(elf),
        _ => None,
    }
}

fn read_busybox(path: &Path) -> Result<Vec<u8>, ImportError> {
    let problem = |problem| ImportError::Busybox { path: path.to_path_buf(), problem };
    let data = match fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(problem("missing")),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    match elf_is_dynamic(&data) {
        None => Err(problem("not an ELF executable")),
        Some(true) => Err(problem("dynamically linked")),
        Some(false) => Ok(data),
    }
}

/// Writes the cpio archive (uncompressed) to `out`: busybox, `/init`,
/// `/dev/console`, and each `(name, file)` module as `/lib/modules/<name>.ko`
/// in the given load order.
pub fn write_cpio<W: Write>(out: W, busybox: &[u8], modules: &[(String, Vec<u8>)]) -> io::Result<W> {
    let mut cpio = CpioWriter::new(out);
    for dir in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        cpio.dir(dir, 0o755)?;
    }
    cpio.char_device("dev/console", 0o600, 5, 1)?;
    cpio.file("bin/busybox", 0o755, busybox)?;
    for applet in APPLETS {
        cpio.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    cpio.file("init", 0o755, INIT_SCRIPT.as_bytes())?;
    let mut order = String::new();
    for (name, data) in modules {
        cpio.file(&format!("lib/modules/{name}.ko"), 0o644, data)?;
        order.push_str(name);
        order.push('\n');
    }
    cpio.file(LOAD_ORDER_PATH, 0o644, order.as_bytes())?;
    cpio.finish()
}

/// Writes a gzip-compressed initramfs to `dest` with the busybox at
/// `busybox` and the modules `(name, .ko path)`, in load order.
pub fn write_initramfs(
    dest: &Path,
    busybox: &Path,
    modules: &[(String, std::path::PathBuf)],
) -> Result<(), ImportError> {
    let busybox = read_busybox(busybox)?;
    let modules: Vec<(String, Vec<u8>)> = modules
        .iter()
        .map(|(name, path)| Ok((name.clone(), fs::read(path).map_err(io_err("read", path))?)))
        .collect::<Result<_, ImportError>>()?;
    let file = fs::File::create(dest).map_err(io_err("create", dest))?;
    let gz = flate2::write::GzEncoder::new(io::BufWriter::new(file), flate2::Compression::default());
    write_cpio(gz, &busybox, &modules)
        .and_then(|gz| gz.finish())
        .and_then(|mut w| w.flush())
        .map_err(io_err("write", dest))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;

    /// One entry read back from a newc archive.
    #[derive(Debug)]
    pub(crate) struct CpioEntry {
        pub name: String,
        pub mode: u32,
        pub rdev: (u32, u32),
        pub data: Vec<u8>,
    }

    /// A tiny newc reader, independent of the writer's code.
    pub(crate) fn read_cpio(mut data: &[u8]) -> Vec<CpioEntry> {
        let mut entries = Vec::new();
        let mut offset = 0usize;
        loop {
            assert_eq!(&data[..6], b"070701", "bad magic at {offset}");
            let field =
                |i: usize| u32::from_str_radix(std::str::from_utf8(&data[6 + 8 * i..14 + 8 * i]).unwrap(), 16).unwrap();
            let (mode, size, rdev, namesize) = (field(1), field(6) as usize, (field(9), field(10)), field(11) as usize);
            let name = std::str::from_utf8(&data[110..110 + namesize - 1]).unwrap().to_string();
            assert_eq!(data[110 + namesize - 1], 0);
            let data_start = (110 + namesize).next_multiple_of(4);
            let end = (data_start + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!((offset + end) % 4, 0);
                return entries;
            }
            entries.push(CpioEntry { name, mode, rdev, data: data[data_start..data_start + size].to_vec() });
            data = &data[end..];
            offset += end;
        }
    }

    /// Decompresses a gzip'd initramfs and reads its entries.
    pub(crate) fn read_initramfs(path: &Path) -> Vec<CpioEntry> {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(fs::File::open(path).unwrap()).read_to_end(&mut raw).unwrap();
        read_cpio(&raw)
    }

    #[test]
    fn cpio_round_trips() {
        let modules = vec![("virtio".to_string(), b"a".to_vec()), ("virtio_blk".to_string(), b"bbbbb".to_vec())];
        let raw = write_cpio(Vec::new(), b"\x7fELF busybox", &modules).unwrap();
        assert_eq!(raw.len() % 4, 0);
        let entries = read_cpio(&raw);
        let get = |name: &str| entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(get("bin/busybox").data, b"\x7fELF busybox");
        assert_eq!(get("bin/busybox").mode, S_IFREG | 0o755);
        assert_eq!(get("bin/sh").mode, S_IFLNK | 0o777);
        assert_eq!(get("bin/sh").data, b"busybox");
        assert_eq!(get("init").data, INIT_SCRIPT.as_bytes());
        assert_eq!(get("dev/console").rdev, (5, 1));
        assert_eq!(get("lib/modules/virtio_blk.ko").data, b"bbbbb");
        assert_eq!(get(LOAD_ORDER_PATH).data, b"virtio\nvirtio_blk\n");
        assert_eq!(get("newroot").mode, S_IFDIR | 0o755);
    }

    #[test]
    fn busybox_must_exist_and_be_static() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("initrd.img");
        let err = write_initramfs(&dest, &dir.path().join("nope"), &[]).unwrap_err();
        assert!(err.to_string().contains("busybox-static"), "{err}");
        let text = dir.path().join("text");
        fs::write(&text, "#!/bin/sh\n").unwrap();
        let err = write_initramfs(&dest, &text, &[]).unwrap_err();
        assert!(matches!(err, ImportError::Busybox { problem: "not an ELF executable", .. }), "{err}");
    }

    #[test]
    fn dynamic_elf_is_detected() {
        // ELF64 header with one PT_INTERP program header right after it.
        let mut elf = vec![0u8; 0x40 + 0x38];
        elf[..4].copy_from_slice(crate::import::ELF_MAGIC);
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1; // EV_CURRENT, as in every real ELF file
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[0x40..0x44].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(elf_is_dynamic(&elf), Some(true));
        elf[0x40..0x44].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(elf_is_dynamic(&elf), Some(false));
        // Cut short anywhere, or with headers pointing outside: not an ELF, no panic.
        for len in 0..elf.len() {
            assert_eq!(elf_is_dynamic(&elf[..len]), None, "cut to {len} bytes");
        }
        elf[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(elf_is_dynamic(&elf), None);
    }

    #[test]
    fn a_truncated_busybox_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let cut = dir.path().join("busybox");
        fs::write(&cut, b"\x7fELF\x02\x01\x01\0\0\0").unwrap();
        let err = write_initramfs(&dir.path().join("initrd.img"), &cut, &[]).unwrap_err();
        assert!(matches!(err, ImportError::Busybox { problem: "not an ELF executable", .. }), "{err}");
        assert!(err.to_string().contains("is not an ELF executable: install Debian's busybox-static"), "{err}");
    }

    #[test]
    fn initramfs_is_gzip_with_the_host_busybox() {
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            eprintln!("SKIP: no /bin/busybox (Debian's busybox-static)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ko = dir.path().join("virtio.ko");
        fs::write(&ko, b"module").unwrap();
        let dest = dir.path().join("initrd.img");
        write_initramfs(&dest, busybox, &[("virtio".into(), ko)]).unwrap();
        let entries = read_initramfs(&dest);
        assert!(entries.iter().any(|e| e.name == "lib/modules/virtio.ko"));
        assert_eq!(entries.iter().find(|e| e.name == "bin/busybox").unwrap().data, fs::read(busybox).unwrap());
    }

    #[test]
    fn init_script_parses_with_busybox_sh() {
        let Ok(status) = std::process::Command::new("busybox").args(["sh", "-n", "-c", INIT_SCRIPT]).status() else {
            eprintln!("SKIP: busybox not found, init script syntax not checked");
            return;
        };
        assert!(status.success(), "busybox sh -n rejected the init script");
    }
}
