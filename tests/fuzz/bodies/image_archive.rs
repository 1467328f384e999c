//! Any bytes as an image archive (`k3node images import FILE`), through the operator's reader,
//! which learns every image before anything is sent: it must never panic, and what it accepts
//! names images whose digests and blobs are all in the archive, with the sizes it read.

use k3node::images::{read_archive, BlobData};

pub fn run(data: &[u8]) {
    let reader = Box::new(std::io::Cursor::new(data.to_vec()));
    let archive = match read_archive("fuzz.tar", reader) {
        Ok(archive) => archive,
        Err(error) => {
            // Every refusal names the file, so the operator can tell which input it was.
            assert!(error.to_string().contains("fuzz.tar"), "{error}");
            return;
        }
    };
    assert!(!archive.images.is_empty(), "an accepted archive holds an image");
    for image in &archive.images {
        let hex = image.digest.strip_prefix("sha256:").unwrap_or_default();
        assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()), "{}", image.digest);
        assert_eq!(image.blobs.first(), Some(&image.digest), "an image's own blob comes first");
        let mut size = 0;
        for digest in &image.blobs {
            let blob =
                archive.blobs.get(digest).unwrap_or_else(|| panic!("{digest} of {} is not in the archive", image.name));
            if let BlobData::Memory(bytes) = &blob.data {
                assert_eq!(bytes.len() as u64, blob.size);
            }
            size += blob.size;
        }
        assert_eq!(size, image.size, "{}: its size is its blobs'", image.name);
    }
}
