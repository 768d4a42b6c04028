//! Behaviour test: code generated from `generated/every_type.idl` (committed
//! as `generated/types_gen.rs`) compiles, and every type round-trips through
//! the wire codec: owned -> bytes -> owned, and owned -> bytes -> view ->
//! bytes. Also checks that the committed file is what `idlc gen` writes.
#![forbid(unsafe_code)]

/// The generated code, included rather than a `#[path]` module so that
/// rustfmt (which follows `#[path]`) leaves the prettyplease output alone.
// Not every generated constant is used by these tests.
#[allow(dead_code)]
mod types_gen {
    include!("generated/types_gen.rs");
}

use std::path::Path;
use std::process::Command;

use shm_channel::wire::{
    Bounded, Decode, Encode, WireError, decode_exact, encode_to, encode_to_vec,
};
use types_gen::*;

/// The committed file is up to date (`idlc gen --check`, as users would run
/// it in CI); regenerate with
/// `cd idl-codegen/tests/generated && idlc gen every_type.idl -o types_gen.rs`.
#[test]
fn committed_code_is_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/generated");
    let out = Command::new(env!("CARGO_BIN_EXE_idlc"))
        .args(["gen", "every_type.idl", "-o", "types_gen.rs", "--check"])
        .current_dir(&dir)
        .output()
        .expect("run idlc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Encodes `value`, checks `encoded_len` and `MIN_ENCODED_LEN`, decodes it
/// back as the owned type; returns the bytes.
fn owned_round_trip<T>(value: &T) -> Vec<u8>
where
    T: Encode + for<'a> Decode<'a> + PartialEq + std::fmt::Debug,
{
    let buf = encode_to_vec(value).expect("encode");
    assert_eq!(buf.len(), value.encoded_len());
    assert!(
        buf.len() >= <T as Decode<'_>>::MIN_ENCODED_LEN,
        "MIN_ENCODED_LEN overstates"
    );
    let owned: T = decode_exact(&buf).expect("decode owned");
    assert_eq!(&owned, value);
    buf
}

/// Decodes `bytes` as `V` (a view, or an owned type) and re-encodes it: the
/// same bytes.
fn view_round_trip<'b, V: Encode + Decode<'b>>(bytes: &'b [u8]) -> V {
    let view: V = decode_exact(bytes).expect("decode view");
    assert_eq!(encode_to_vec(&view).expect("re-encode view"), bytes);
    view
}

/// Both round trips.
fn round_trip<T>(value: &T) -> T
where
    T: Encode + for<'a> Decode<'a> + PartialEq + std::fmt::Debug,
{
    let bytes = owned_round_trip(value);
    view_round_trip(&bytes)
}

fn scalars() -> Scalars {
    Scalars {
        a: true,
        b: 1,
        c: 2,
        d: 3,
        e: 4,
        f: -5,
        g: -6,
        h: -7,
        i: -8,
        j: 9.5,
        k: -10.25,
    }
}

fn containers() -> Containers {
    Containers {
        name: "surface".into(),
        any_name: "any".into(),
        blob: vec![1, 2, 3],
        any_blob: vec![0; 100],
        grid: [[1, 2, 3, 4], [5, 6, 7, 8], [0; 4], [9; 4]],
        list: vec![10, 20],
        any_list: (0..1000).collect(),
        flags: vec![true, false, true],
        nested: vec![Some(Bounded("eight888".into())), None],
        labels: [Bounded("ab".into()), Bounded("abcd".into())],
        maybe: Some(scalars()),
        maybe_name: Some(Bounded("x".into())),
        points: vec![Point { x: 1, y: -1 }, Point::default()],
        shapes: vec![
            Shape::Empty,
            Shape::Dot,
            Shape::Circle(1.5),
            Shape::Named("n".into()),
            Shape::At(Rect {
                origin: Point { x: 3, y: 4 },
                width: 5,
                height: 6,
            }),
        ],
    }
}

fn tree() -> Tree {
    Tree {
        value: 1,
        left: Some(Box::new(Tree {
            value: 2,
            left: None,
            children: vec![],
        })),
        children: vec![
            Tree {
                value: 3,
                left: None,
                children: vec![],
            },
            Tree {
                value: 4,
                left: None,
                children: vec![Tree::default()],
            },
        ],
    }
}

#[test]
fn structs_without_views_round_trip() {
    assert_eq!(round_trip(&scalars()), scalars());
    assert_eq!(round_trip(&Point { x: -3, y: 7 }), Point { x: -3, y: 7 });
    assert_eq!(round_trip(&Empty {}), Empty {});
    assert!(owned_round_trip(&Empty {}).is_empty());
    let node = Node {
        value: 1,
        next: Some(Box::new(Node {
            value: 2,
            next: None,
        })),
    };
    assert_eq!(round_trip(&node), node);
}

#[test]
fn containers_round_trip_through_the_view() {
    let value = containers();
    let buf = owned_round_trip(&value);
    let view: ContainersView<'_> = view_round_trip(&buf);
    // The view borrows from the buffer: strings and bytes are not copied.
    assert_eq!(view.name, "surface");
    assert!(buf.as_ptr_range().contains(&view.name.as_ptr()));
    assert_eq!(view.blob, [1, 2, 3]);
    assert_eq!(view.grid, value.grid);
    assert_eq!(view.list.to_vec(), [10, 20]);
    assert_eq!(view.any_list.len(), 1000);
    assert_eq!(view.flags.to_vec().expect("flags"), [true, false, true]);
    let nested: Vec<Option<&str>> = view
        .nested
        .iter()
        .map(|n| n.expect("nested").map(|s| s.0))
        .collect();
    assert_eq!(nested, [Some("eight888"), None]);
    assert_eq!(view.labels.map(|l| l.0), ["ab", "abcd"]);
    assert_eq!(view.maybe, Some(scalars()));
    assert_eq!(view.maybe_name.map(|s| s.0), Some("x"));
    assert_eq!(
        view.points.to_vec().expect("points")[0],
        Point { x: 1, y: -1 }
    );
    let shapes: Vec<ShapeView<'_>> = view.shapes.to_vec().expect("shapes");
    assert!(matches!(shapes[3], ShapeView::Named("n")));
    assert!(matches!(shapes[4], ShapeView::At(Rect { width: 5, .. })));
    // Back to an owned value, for a handler that keeps it.
    assert_eq!(view.owned(), Ok(value));
    assert_eq!(shapes[3].owned(), Ok(Shape::Named("n".into())));
}

#[test]
fn enums_round_trip_with_their_discriminants() {
    for shape in containers().shapes {
        let _: ShapeView<'_> = view_round_trip(&owned_round_trip(&shape));
    }
    // Discriminants as in the IDL, little-endian u32 first.
    assert_eq!(encode_to_vec(&Shape::Dot).expect("encode"), [5, 0, 0, 0]);
    assert_eq!(Shape::At(Rect::default()).encoded_len(), 4 + 16);
    assert_eq!(
        encode_to_vec(&Plain::Two(Point { x: 1, y: 2 })).expect("encode")[..4],
        [9, 0, 0, 0]
    );
    for plain in [
        Plain::Zero,
        Plain::One(u64::MAX),
        Plain::Two(Point { x: 1, y: 2 }),
    ] {
        assert_eq!(round_trip(&plain), plain);
    }
    assert_eq!(round_trip(&Single::Only), Single::Only);
    assert_eq!(
        decode_exact::<Plain>(&[2, 0, 0, 0]),
        Err(WireError::UnknownDiscriminant(2))
    );
    assert_eq!(Plain::default(), Plain::Zero);
}

#[test]
fn recursive_types_round_trip() {
    let buf = owned_round_trip(&tree());
    let view: TreeView<'_> = view_round_trip(&buf);
    assert_eq!(view.value, 1);
    assert_eq!(view.left.as_ref().map(|l| l.value), Some(2));
    assert_eq!(view.children.len(), 2);
    assert_eq!(view.owned(), Ok(tree()));
}

#[test]
fn keywords_are_usable() {
    let value = r#type {
        r#match: 1,
        r#fn: "abc".into(),
        self_: true,
    };
    let buf = owned_round_trip(&value);
    let view: typeView<'_> = view_round_trip(&buf);
    assert_eq!(view.r#fn, "abc");
}

#[test]
fn names_in_other_cases_and_cycles_through_enums() {
    let mixed = mixed_Case {
        camelField: 1,
        big: [7; 40],
        floats: vec![0.5, -1.0],
    };
    let buf = owned_round_trip(&mixed);
    let view: mixed_CaseView<'_> = view_round_trip(&buf);
    assert_eq!(view.floats.to_vec(), [0.5, -1.0]);
    assert_eq!(lowerConst, 1);

    let other = Other {
        m: Mutual::Branch(Some(Box::new(Other::default()))),
        pair: [Mutual::Leaf, Mutual::Branch(None)],
    };
    assert_eq!(round_trip(&other), other);
    assert_eq!(every_type::DO_THING.id, 12);
}

#[test]
fn bounds_are_enforced_both_ways() {
    let mut value = containers();
    value.name = "x".repeat(65);
    assert_eq!(
        encode_to_vec(&value),
        Err(WireError::TooLong { len: 65, max: 64 })
    );
    let mut value = containers();
    value.nested = vec![Some(Bounded("nine99999".into()))];
    assert_eq!(
        encode_to_vec(&value),
        Err(WireError::TooLong { len: 9, max: 8 })
    );
    let mut value = containers();
    value.points = vec![Point::default(); 4];
    assert_eq!(
        encode_to_vec(&value),
        Err(WireError::TooLong { len: 4, max: 3 })
    );
    // A peer that sends a longer string than the bound is refused on
    // receive too: encode a `type` whose `fn` (string<3>) holds 4 bytes by
    // writing the fields by hand.
    let mut bytes = vec![0u8; 1 + 4 + 4 + 1];
    bytes[1] = 4;
    bytes[5..9].copy_from_slice(b"abcd");
    assert_eq!(
        decode_exact::<typeView<'_>>(&bytes).map(|_| ()),
        Err(WireError::TooLong { len: 4, max: 3 })
    );
    assert_eq!(
        decode_exact::<r#type>(&bytes).map(|_| ()),
        Err(WireError::TooLong { len: 4, max: 3 })
    );
    let mut small = [0u8; 3];
    assert!(matches!(
        encode_to(&scalars(), &mut small),
        Err(WireError::BufferTooSmall { .. })
    ));
}

#[test]
fn consts_and_protocol_constants() {
    assert_eq!(NAME_MAX, 64);
    assert_eq!(PAGE, 4096);
    assert_eq!(SMALL, 0xff);
    assert_eq!(OFFSET, -1000);
    assert_eq!(MOST_NEGATIVE, i64::MIN);
    const { assert!(ENABLED) };
    assert_eq!(GREETING, "hello, \"world\"\n");
    assert_eq!(SHORT, "ok");

    assert_eq!(every_type::NAME, "EveryType");
    assert_eq!(every_type::VERSION, 3);
    assert_eq!(
        every_type::SHAPE,
        shm_channel::rpc::Method {
            name: "shape",
            id: 1,
            since: 2,
            delivery: 0
        }
    );
    // `name` would clash with the protocol's `NAME`.
    assert_eq!(every_type::NAME_METHOD.id, 10);
    assert_eq!(every_type::CHANGED.id, 11);
    assert_eq!(every_type::CLIENT_TO_SERVER_MAX, 1 << 20);
    assert_eq!(every_type::CLIENT_TO_SERVER_DECIDED_BY, "default");
    const { assert!(every_type::SERVER_TO_CLIENT_MAX >= 4096) };
}

/// The generated stubs over a real shm service (server on a thread of this
/// process; the two-process behaviour tests live in `idl-tests`): two-way
/// calls with views, a typed error, a one-way and an event sent from inside
/// a handler, and `@since` refused against a version the server does not
/// speak.
mod stubs {
    use super::types_gen::every_type::{self, Context, Event, Server};
    use super::types_gen::*;
    use super::{containers, tree};
    use shm_channel::rpc::{CallError, ServeEnd, ServeOptions};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    struct Impl {
        names: u32,
    }

    impl Server for Impl {
        fn echo(&mut self, _ctx: &Context<'_>, value: ContainersView<'_>) -> Containers {
            value.owned().expect("a valid view")
        }

        fn shape(&mut self, _ctx: &Context<'_>, s: ShapeView<'_>) -> Result<Tree, Plain> {
            match s {
                ShapeView::Empty => Ok(tree()),
                _ => Err(Plain::One(7)),
            }
        }

        fn name(&mut self, ctx: &Context<'_>, t: typeView<'_>) {
            self.names += 1;
            let node = Node {
                value: t.r#match,
                next: None,
            };
            ctx.events()
                .changed(ctx.client(), &node)
                .expect("event sent");
        }

        fn do_thing(&mut self, _ctx: &Context<'_>, _m: mixed_CaseView<'_>, _o: Other) {}
    }

    #[test]
    fn generated_client_and_server_talk_over_shm() {
        let service = format!("codegen-stubs-{}", std::process::id());
        let stop = Arc::new(AtomicBool::new(false));
        let opts = ServeOptions {
            stop: Some(Arc::clone(&stop)),
            poll: Duration::from_millis(10),
            ..ServeOptions::default()
        };
        // Version 2 only: `shape` (since 2) works, a client limited to 1 is refused.
        let config = every_type::service_config();
        let events = every_type::Events::new();
        let server = {
            let service = service.clone();
            let events = events.clone();
            std::thread::spawn(move || {
                every_type::serve_with(&service, Impl { names: 0 }, config, &events, &opts)
            })
        };
        let mut client = connect_retrying(&service);
        assert_eq!(client.version(), every_type::VERSION);
        assert_eq!(client.echo(&containers()), Ok(containers()));
        assert_eq!(client.shape(&Shape::Empty), Ok(tree()));
        assert_eq!(
            client.shape(&Shape::Dot),
            Err(CallError::Remote(Plain::One(7)))
        );
        let t = r#type {
            r#match: 9,
            r#fn: "ab".into(),
            self_: true,
        };
        client.name(&t).expect("one-way sent");
        assert_eq!(
            client.recv_event(Duration::from_secs(10)),
            Ok(Event::Changed {
                n: Node {
                    value: 9,
                    next: None
                }
            })
        );
        // A string over its bound is refused before sending.
        let long = r#type {
            r#fn: "abcd".into(),
            ..t
        };
        assert!(matches!(client.name(&long), Err(CallError::Transport(_))));
        assert_eq!(
            client
                .with_timeout(Duration::from_secs(5))
                .echo(&containers()),
            Ok(containers())
        );
        stop.store(true, Ordering::Relaxed);
        assert!(matches!(
            server.join().expect("server thread"),
            Ok(ServeEnd::Stopped)
        ));
    }

    fn connect_retrying(service: &str) -> every_type::Client {
        let mut tries = 0;
        loop {
            match every_type::Client::connect(service) {
                Ok(c) => return c,
                Err(e) if tries < 200 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("connect: {e}"),
            }
        }
    }
}
