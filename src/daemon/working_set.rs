//! Keeps the agent's resident memory to the pages it uses.
//!
//! One `k3node` binary (about 24 MB) is operator, helper, hub, Kubernetes client and SQLite; an
//! agent's loop runs a small part of it. The kernel maps a file's pages into a process in blocks:
//! fault-around maps 64 KiB around each fault, and page-cache folios are up to hundreds of KiB
//! after a large write (how `up` installs the binary) or after readahead (how it is read back
//! after a reboot). Measured on the lab's kernel: touching one byte in every 256 KiB of a cached
//! file made 224 KiB resident per touch. So after startup most of the agent's RSS is binary pages
//! it ran once or never.
//!
//! After its first report the agent marks its binary's read-only mappings as randomly accessed
//! (no readahead: a later fault reads one page) and asks the kernel to reclaim their clean pages
//! now (`MADV_PAGEOUT`, Linux 5.4). Pages the loop needs come back one at a time.
//!
//! Invariants: only the binary's non-writable mappings are advised (its written pages and the
//! heap are never touched); the advice changes what is resident, never what is mapped or its
//! contents; it is best effort (an older kernel or a refusal leaves memory as it was).

use std::path::Path;

/// A mapping of `/proc/self/maps`: its address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: usize,
    pub end: usize,
}

/// The non-writable mappings of `file` in a `/proc/<pid>/maps` listing.
pub fn read_only_mappings(maps: &str, file: &str) -> Vec<Range> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, ' ');
            let (range, perms) = (fields.next()?, fields.next()?);
            let path = fields.nth(3)?.trim_start();
            if path != file || perms.as_bytes().get(1) != Some(&b'-') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(Range { start: usize::from_str_radix(start, 16).ok()?, end: usize::from_str_radix(end, 16).ok()? })
        })
        .collect()
}

/// Advises the kernel on this process's read-only mappings of `file` (see the module doc);
/// returns how many mappings took the advice.
pub fn shed_pages_of(file: &Path) -> Result<usize, std::io::Error> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for range in read_only_mappings(&maps, &file.to_string_lossy()) {
        let Some(addr) = std::ptr::NonNull::new(range.start as *mut std::ffi::c_void) else { continue };
        for advice in [nix::sys::mman::MmapAdvise::MADV_RANDOM, nix::sys::mman::MmapAdvise::MADV_PAGEOUT] {
            // SAFETY: the range is one of this process's own file mappings, as the kernel listed
            // it; both advices leave the mapping and its contents as they are (a reclaimed clean
            // page is read back from the file on the next access).
            unsafe { nix::sys::mman::madvise(addr, range.end - range.start, advice) }?;
        }
        advised += 1;
    }
    Ok(advised)
}

/// [`shed_pages_of`] this process's own binary; failures are logged, not raised.
pub fn shed_binary_pages() {
    let outcome = std::fs::read_link("/proc/self/exe").and_then(|exe| shed_pages_of(&exe));
    match outcome {
        Ok(n) => tracing::debug!("the binary's pages released from {n} mappings; the loop brings back what it uses"),
        Err(e) => tracing::debug!("the binary's pages stay resident: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MAPS: &str = "\
55d0c0000000-55d0c0400000 r--p 00000000 fe:01 1234                       /usr/local/bin/k3node
55d0c0400000-55d0c1200000 r-xp 00400000 fe:01 1234                       /usr/local/bin/k3node
55d0c1200000-55d0c1300000 rw-p 01200000 fe:01 1234                       /usr/local/bin/k3node
55d0c2000000-55d0c2100000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000100000 r-xp 00000000 fe:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000200000-7f0000300000 r--p 00000000 fe:01 77                         /usr/local/bin/k3node (deleted)
";

    #[test]
    fn only_the_files_own_read_only_mappings_are_chosen() {
        let ranges = read_only_mappings(MAPS, "/usr/local/bin/k3node");
        assert_eq!(
            ranges,
            vec![
                Range { start: 0x55d0c0000000, end: 0x55d0c0400000 },
                Range { start: 0x55d0c0400000, end: 0x55d0c1200000 }
            ]
        );
        // A binary replaced while running is listed as "(deleted)", as /proc/self/exe names it.
        assert_eq!(read_only_mappings(MAPS, "/usr/local/bin/k3node (deleted)").len(), 1);
        assert!(read_only_mappings(MAPS, "/usr/local/bin/k3").is_empty());
    }

    /// Resident KiB of this process's mappings of `file` (/proc/self/smaps).
    fn resident_kib(file: &str) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut ours = false;
        let mut kib = 0;
        for line in smaps.lines() {
            if let Some(rest) = line.strip_prefix("Rss:") {
                if ours {
                    kib += rest.trim().trim_end_matches(" kB").trim().parse::<u64>().unwrap();
                }
            } else if line
                .split_whitespace()
                .next()
                .is_some_and(|range| range.contains('-') && range.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
            {
                ours = line.ends_with(file);
            }
        }
        kib
    }

    #[test]
    fn a_shed_mapping_keeps_its_contents_and_holds_only_the_pages_touched_afterwards() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("binary");
        let mut file = std::fs::File::create(&path).unwrap();
        // 16 MiB in 1 MiB writes (large page-cache folios, as a copied binary has), made clean.
        let block: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        for _ in 0..16 {
            file.write_all(&block).unwrap();
        }
        file.sync_all().unwrap();
        drop(file);
        let file = std::fs::File::open(&path).unwrap();
        let len = 16usize << 20;
        // SAFETY: a private read-only mapping of a file this test owns and no one changes.
        let map = unsafe {
            nix::sys::mman::mmap(
                None,
                std::num::NonZeroUsize::new(len).unwrap(),
                nix::sys::mman::ProtFlags::PROT_READ,
                nix::sys::mman::MapFlags::MAP_PRIVATE,
                &file,
                0,
            )
        }
        .unwrap();
        let bytes = unsafe { std::slice::from_raw_parts(map.as_ptr() as *const u8, len) };
        let touch = || (0..len).step_by(256 << 10).map(|i| bytes[i] as u64).sum::<u64>();
        let name = path.to_string_lossy().to_string();

        let sum = touch();
        let before = resident_kib(&name);
        assert!(before >= 64 * 64, "64 touches map at least 64 KiB each: {before} KiB");

        assert_eq!(shed_pages_of(&path).unwrap(), 1);
        assert!(resident_kib(&name) < before / 4, "released: {} of {before} KiB", resident_kib(&name));
        assert_eq!(touch(), sum, "the contents read back are the file's");
        let after = resident_kib(&name);
        assert!(after <= 64 * 4 * 4, "64 touches now hold about 64 pages: {after} KiB (before {before})");
        unsafe { nix::sys::mman::munmap(map, len) }.unwrap();
    }
}
