//! `MessageView::parse` over peer bytes, then every object. What parses must
//! iterate without errors and yield exactly the header's object count; a view
//! built with `from_validated` from an unvalidated header must stay in bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_layout::{MessageHeader, MessageView};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(view) = MessageView::parse(bytes) {
        let header = *view.header();
        assert!(view.bytes().len() as u64 == header.length);
        let mut count = 0u64;
        for object in view.objects() {
            let object = object.expect("a parsed message's objects all decode");
            let _ = view.object(object.id);
            count += 1;
        }
        assert_eq!(count, header.object_count);
    }
    // A reader that kept a header and re-borrows bytes someone rewrote.
    if let Ok(header) = MessageHeader::decode(bytes) {
        let _ = header.kind();
        let view = MessageView::from_validated(header, bytes);
        for object in view.objects() {
            if object.is_err() {
                break;
            }
        }
    }
});
