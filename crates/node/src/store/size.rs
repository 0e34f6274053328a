//! Sizes as they go on the wire. The limits on change sets and environments count bytes as
//! an agent receives them (JSON-escaped text, base64 for bytes that are not UTF-8, the
//! framing of each entry), not as they are stored: a control character is 1 byte stored and
//! 6 on the wire. Both stores count the same way; the Redis commit script carries the same
//! function in Lua ([`LUA`]), and a test holds the two to the same answers.

use tether_core::protocol::MAX_AGENT_FRAME;

/// Largest value accepted (as stored).
pub const MAX_VALUE: usize = 512 * 1024;
/// Largest change set as sent in a change frame: room for what the raw 900 KiB limit of
/// earlier versions let through once escaped, and for the largest value, whatever its bytes.
pub const MAX_CHANGE_SET: usize = 6 * 1024 * 1024;
/// Largest environment as sent in a snapshot frame: with the frame's header it stays well
/// under what an agent accepts ([`MAX_AGENT_FRAME`]).
pub const MAX_ENV: usize = 8 * 1024 * 1024;

/// What an entry adds to a frame besides its name and value: `{"name":`, `,"value":`,
/// `,"secret":false}` and the comma between entries (a change's `,"secret":true` or
/// `,"delete":true` is shorter).
pub const ENTRY_OVERHEAD: usize = 34;

/// Largest frame header around the entries: type, position and an environment name of
/// 256 bytes, every one escaped.
pub const FRAME_HEADER: usize = 1024;

// Every frame leaves at least a third of the agent's limit spare.
const _: () = assert!((MAX_ENV + FRAME_HEADER) * 3 / 2 <= MAX_AGENT_FRAME);
const _: () = assert!((MAX_CHANGE_SET + FRAME_HEADER) * 3 / 2 <= MAX_AGENT_FRAME);
const _: () = assert!(6 * MAX_VALUE + 256 * 2 + 10 + ENTRY_OVERHEAD <= MAX_CHANGE_SET);

/// Length of `s` as a JSON string, quotes included, escaped as `serde_json` writes it:
/// `"`, `\` and `\b \f \n \r \t` take 2 bytes, other control characters 6 (`\u00XX`).
pub fn json_len(s: &[u8]) -> usize {
    let extra: usize = s
        .iter()
        .map(|&b| match b {
            b'"' | b'\\' | 8 | 9 | 10 | 12 | 13 => 1,
            0..=31 => 5,
            _ => 0,
        })
        .sum();
    s.len() + 2 + extra
}

/// Length of a value as sent: a JSON string, or `{"b64":"…"}` when it is not UTF-8.
pub fn value_len(v: &[u8]) -> usize {
    match std::str::from_utf8(v) {
        Ok(_) => json_len(v),
        Err(_) => 4 * v.len().div_ceil(3) + 10,
    }
}

/// What one entry adds to a snapshot frame (an upper bound for a change frame too).
pub fn entry_size(name: &str, value: &[u8]) -> usize {
    json_len(name.as_bytes()) + value_len(value) + ENTRY_OVERHEAD
}

/// What a delete adds to a change frame (an upper bound).
pub fn delete_size(name: &str) -> usize {
    json_len(name.as_bytes()) + ENTRY_OVERHEAD
}

/// The same functions in Lua (Redis runs Lua 5.1: no utf8 library, patterns by byte).
/// UTF-8 is checked by replacing every well-formed multi-byte sequence with one ASCII byte
/// and looking for a high byte left over.
pub const LUA: &str = r#"
local function json_len(s)
  if not string.find(s, '[%z\1-\31"\\]') then
    return #s + 2
  end
  local _, special = string.gsub(s, '[%z\1-\31"\\]', '')
  local _, long = string.gsub(s, '[%z\1-\7\11\14-\31]', '')
  return #s + 2 + special + 4 * long
end
local function is_utf8(s)
  if not string.find(s, '[\128-\255]') then
    return true
  end
  local t = s
  for _, p in ipairs({
    '\240[\144-\191][\128-\191][\128-\191]', '[\241-\243][\128-\191][\128-\191][\128-\191]',
    '\244[\128-\143][\128-\191][\128-\191]', '\224[\160-\191][\128-\191]',
    '[\225-\236][\128-\191][\128-\191]', '\237[\128-\159][\128-\191]',
    '[\238-\239][\128-\191][\128-\191]', '[\194-\223][\128-\191]'
  }) do
    t = string.gsub(t, p, 'x')
  end
  return not string.find(t, '[\128-\255]')
end
local function value_len(v)
  if is_utf8(v) then
    return json_len(v)
  end
  return 4 * math.ceil(#v / 3) + 10
end
local function entry_size(name, value)
  return json_len(name) + value_len(value) + ENTRY_OVERHEAD
end
"#;

/// [`LUA`] ready to be put at the top of a script.
pub fn lua() -> String {
    LUA.replace("ENTRY_OVERHEAD", &ENTRY_OVERHEAD.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tether_core::protocol::{WireChange, WireEntry};
    use tether_core::secret::Value;

    /// Values with every awkward kind of byte: controls, quotes, backslashes, DEL,
    /// multi-byte text, the edges of UTF-8, and bytes that are not UTF-8.
    pub(crate) fn awkward() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"plain".to_vec(),
            (0u8..=127).collect(),
            (0u8..=255).collect(),
            vec![1; 1000],
            b"\"quoted\" \\back\\ \x08\x0c\n\r\t\x7f".to_vec(),
            "h\u{e9}llo \u{4e16}\u{754c} \u{1f600} \u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}"
                .as_bytes()
                .to_vec(),
            vec![0xc0, 0x80],
            vec![0xe0, 0x80, 0x80],
            vec![0xed, 0xa0, 0x80],
            vec![0xf4, 0x90, 0x80, 0x80],
            vec![0xf0, 0x80, 0x80, 0x80],
            vec![0xe1, 0xc2, 0x80, 0x80],
            vec![0xe1, 0x80],
            vec![0x80],
            vec![0xff, 0xfe, 0x00],
            b"ok \xce\xbb then \xce".to_vec(),
        ];
        v.extend((1..5).map(|n| vec![0xe4; n]));
        v
    }

    #[test]
    fn sizes_are_what_serde_json_writes() {
        for value in awkward() {
            for name in ["A", "we\"ird\\name", "\u{e9}t\u{e9}"] {
                let e = WireEntry {
                    name: name.into(),
                    value: Some(Value::new(value.clone())),
                    secret: false,
                };
                let json = serde_json::to_string(&e).unwrap();
                assert_eq!(entry_size(name, &value), json.len() + 1, "{value:?} {json}");
                let c = WireChange {
                    name: name.into(),
                    value: Some(Value::new(value.clone())),
                    secret: true,
                    delete: false,
                };
                assert!(serde_json::to_string(&c).unwrap().len() < entry_size(name, &value));
            }
        }
        let d = WireChange {
            name: "X\"".into(),
            value: None,
            secret: false,
            delete: true,
        };
        assert!(serde_json::to_string(&d).unwrap().len() < delete_size("X\""));
    }

    #[test]
    fn a_control_character_costs_six_bytes() {
        assert_eq!(value_len(&[1; 512 * 1024]), 6 * 512 * 1024 + 2);
        assert_eq!(value_len(b"\n"), 4);
        assert_eq!(value_len(&[0xff; 3]), 4 + 10);
    }

    /// A throwaway redis-server on a loopback port, killed on drop.
    pub(crate) struct Redis(std::process::Child, pub(crate) u16);

    impl Redis {
        pub(crate) fn start() -> Redis {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            Redis(child, port)
        }

        pub(crate) fn connection(&self) -> ::redis::Connection {
            let client = ::redis::Client::open(format!("redis://127.0.0.1:{}", self.1)).unwrap();
            let start = std::time::Instant::now();
            loop {
                match client.get_connection() {
                    Ok(c) => return c,
                    Err(e) if start.elapsed() > std::time::Duration::from_secs(20) => {
                        panic!("redis-server did not start: {e}")
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The Lua functions the Redis store counts with give the Rust answers on every kind of
    /// awkward byte, and on random bytes biased towards UTF-8's edges.
    #[test]
    fn lua_and_rust_agree() {
        use rand::{Rng, SeedableRng};
        let redis = Redis::start();
        let mut conn = redis.connection();
        let script = ::redis::Script::new(&format!(
            "{}\nreturn {{json_len(ARGV[1]), value_len(ARGV[1]), entry_size(ARGV[2], ARGV[1])}}",
            lua()
        ));
        let mut values = awkward();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let pool: &[u8] = &[
            0, 1, 8, 9, 10, 12, 13, 31, 34, 92, 65, 127, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0,
            0xc1, 0xc2, 0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5,
            0xff,
        ];
        for _ in 0..3000 {
            let n = rng.gen_range(0..8);
            values.push((0..n).map(|_| pool[rng.gen_range(0..pool.len())]).collect());
        }
        for v in values {
            let name = "n\"a\\me";
            let got: Vec<usize> = script
                .arg(v.as_slice())
                .arg(name)
                .invoke(&mut conn)
                .unwrap();
            let want = vec![json_len(&v), value_len(&v), entry_size(name, &v)];
            assert_eq!(got, want, "bytes {v:?}");
        }
    }
}
