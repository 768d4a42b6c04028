//! The ring-size rule of IDL.md on small protocols, computed by hand.
//!
//! Layout numbers used below (from `shm-layout`): message header 48 bytes,
//! object = 16-byte header + data padded to 8, record rounded up to 64,
//! ring = 512-byte header + body rounded up to a 4096-byte page, and the
//! margin ⌈110% × x⌉.

use std::path::Path;

use idl_parser::model::Protocol;
use idl_parser::sizes::{DecidedBy, RingSize};
use idl_parser::{MemLoader, check_source};

fn protocol(src: &str) -> Protocol {
    match check_source(Path::new("sizes.idl"), src, &MemLoader::new()) {
        Ok(c) => c.model.protocols.into_iter().next().unwrap(),
        Err(e) => panic!("{}", e.render(false)),
    }
}

fn ring(max_bytes: u64, by: &str) -> RingSize {
    RingSize {
        max_bytes,
        decided_by: DecidedBy::Message(by.to_string()),
    }
}

#[test]
fn largest_request_and_reply() {
    let p = protocol(
        "protocol P {
            fn a(x: u32) -> u64;
            fn b(data: bytes<10000>);
        }",
    );
    // a request: object(4) = 16 + 8 = 24; 48 + 24 = 72 -> record 128.
    // a reply:   object(8) = 16 + 8 = 24; 72 -> 128.
    assert_eq!(p.methods[0].request_max, Some(128));
    assert_eq!(p.methods[0].reply_max, Some(128));
    // b request: bytes<10000> = 4 + 10000 = 10004 -> padded 10008 + 16 =
    // 10024; 48 + 10024 = 10072 -> record 10112 (158 × 64).
    assert_eq!(p.methods[1].request_max, Some(10112));
    assert_eq!(p.methods[1].reply_max, None);
    // c2s: max(128, 10112) = 10112 (b); ⌈11 × 10112 / 10⌉ = 11124;
    // 512 + 11124 = 11636 -> 3 pages = 12288.
    assert_eq!(p.ring_sizes.client_to_server, ring(12288, "b"));
    // s2c: the reply of a: ⌈11 × 128 / 10⌉ = 141; 512 + 141 -> 1 page.
    assert_eq!(p.ring_sizes.server_to_client, ring(4096, "a"));
}

#[test]
fn queue_multiplies_one_way_requests() {
    let p = protocol(
        "protocol P {
            fn b(data: bytes<10000>);
            @queue(100) fn q(x: u64);
        }",
    );
    // q: object(8) = 24; 48 + 24 = 72 -> 128; × 100 = 12800 > 10112 (b).
    // ⌈11 × 12800 / 10⌉ = 14080; 512 + 14080 = 14592 -> 4 pages = 16384.
    assert_eq!(p.ring_sizes.client_to_server, ring(16384, "q"));
    // Nothing travels back: one page.
    assert_eq!(
        p.ring_sizes.server_to_client,
        RingSize {
            max_bytes: 4096,
            decided_by: DecidedBy::Empty
        }
    );
}

#[test]
fn events_add_up_with_their_queues() {
    let p = protocol(
        "protocol P {
            fn a(x: u32) -> u64;
            event e(x: u64);
            @queue(64) event v(frame: u64, ts: u64);
        }",
    );
    // reply of a: 128 -> ⌈140.8⌉ = 141.
    // e: object(8) = 24; 48 + 24 = 72 -> 128 -> 141.
    // v: 48 + 24 + 24 = 96 -> 128; × 64 = 8192 -> ⌈9011.2⌉ = 9012.
    // 141 + 141 + 9012 = 9294; 512 + 9294 = 9806 -> 3 pages = 12288, and v
    // is the largest term.
    assert_eq!(p.events[1].max, Some(128));
    assert_eq!(p.ring_sizes.server_to_client, ring(12288, "v"));
    // c2s: request of a: 128 -> 141; 512 + 141 -> 1 page.
    assert_eq!(p.ring_sizes.client_to_server, ring(4096, "a"));
}

#[test]
fn sync_reply_is_an_empty_completion() {
    let p = protocol("protocol P { @sync fn commit(s: u64); }");
    // The completion carries no object: 48 -> record 64.
    assert_eq!(p.methods[0].reply_max, Some(64));
    assert_eq!(p.ring_sizes.server_to_client, ring(4096, "commit"));
}

#[test]
fn buffer_wins_for_both_rings() {
    let p = protocol(
        "@buffer(5000)
        protocol P { fn big(x: bytes<100000>) -> string; event e(s: string); }",
    );
    // 5000 rounded up to whole pages: 8192, even where the bounds say more
    // or are unbounded.
    let r = RingSize {
        max_bytes: 8192,
        decided_by: DecidedBy::Buffer,
    };
    assert_eq!(p.ring_sizes.client_to_server, r);
    assert_eq!(p.ring_sizes.server_to_client, r);
    assert_eq!(p.buffer, Some(5000));
}

#[test]
fn unbounded_messages_get_the_default() {
    let p = protocol(
        "protocol P {
            fn put(name: string) -> u8;
            event e(x: u8);
        }",
    );
    let default = RingSize {
        max_bytes: 1 << 20,
        decided_by: DecidedBy::Default,
    };
    assert_eq!(p.methods[0].request_max, None);
    assert_eq!(p.ring_sizes.client_to_server, default);
    // The reply and the event are bounded: 2 × ⌈11 × 128 / 10⌉ = 282 -> 1 page.
    assert_eq!(p.ring_sizes.server_to_client.max_bytes, 4096);

    let p = protocol("protocol P { fn f(x: u8); event e(items: vec<u8>); }");
    assert_eq!(p.ring_sizes.server_to_client, default);
    assert_eq!(p.ring_sizes.client_to_server.max_bytes, 4096);
}

#[test]
fn unbounded_through_recursion() {
    let p = protocol(
        "struct Tree { v: u8, kids: vec<Tree, 2> }
        protocol P { fn f(t: Tree); }",
    );
    assert_eq!(p.methods[0].request_max, None);
    assert_eq!(p.ring_sizes.client_to_server.decided_by, DecidedBy::Default);
}

#[test]
fn empty_protocol_gets_one_page() {
    let p = protocol("protocol P {}");
    let page = RingSize {
        max_bytes: 4096,
        decided_by: DecidedBy::Empty,
    };
    assert_eq!(p.ring_sizes.client_to_server, page);
    assert_eq!(p.ring_sizes.server_to_client, page);
}

#[test]
fn encoding_of_every_shape() {
    let checked = check_source(
        Path::new("enc.idl"),
        "struct Point { x: i32, y: i32 }
        enum E { A, B(u64), C([u8; 3]) }
        struct All {
            s: string<10>,   // 4 + 10 = 14
            a: [u16; 3],     // 6
            v: vec<u32, 2>,  // 4 + 8 = 12
            o: option<Point>,// 1 + 8 = 9
            e: E,            // 4 + max(0, 8, 3) = 12
            b: bool,         // 1
        }
        protocol P { fn r() -> result<(), E>; }",
        &MemLoader::new(),
    )
    .unwrap();
    let m = &checked.model;
    assert_eq!(m.type_def("Point").unwrap().max_size(), Some(8));
    assert_eq!(m.type_def("E").unwrap().max_size(), Some(12));
    // 14 + 6 + 12 + 9 + 12 + 1 = 54
    assert_eq!(m.type_def("All").unwrap().max_size(), Some(54));
    // result<(), E> = 1 + max(0, 12) = 13 -> object 16 + 16 = 32; 48 + 32 =
    // 80 -> 128.
    assert_eq!(m.protocols[0].methods[0].reply_max, Some(128));
}

#[test]
fn idl_md_example_uses_its_buffer() {
    let checked = idl_parser::check_file(Path::new("tests/corpus/valid/display.idl")).unwrap();
    let p = &checked.model.protocols[0];
    let r = RingSize {
        max_bytes: 4 << 20,
        decided_by: DecidedBy::Buffer,
    };
    assert_eq!(p.ring_sizes.client_to_server, r);
    assert_eq!(p.ring_sizes.server_to_client, r);
    // create_surface: Rect 16, PixelFormat 4, string<256> 260 -> objects
    // 32 + 24 + 280 = 336; 48 + 336 = 384 (already a multiple of 64).
    assert_eq!(p.methods[0].request_max, Some(384));
    // blit: u64 8, Point 8, bytes<16 MiB> 4 + 16777216 -> 24 + 24 + 16777240;
    // + 48 = 16777336 -> 16777344.
    assert_eq!(p.methods[2].request_max, Some(16_777_344));
}
