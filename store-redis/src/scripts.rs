//! The Lua scripts, embedded from `lua/*.lua` and run with `EVALSHA`; a
//! server that does not know a script (`NOSCRIPT`) gets its text with
//! `EVAL`. Each is prefixed with `lua/prelude.lua` and `lua/common.lua`;
//! the claim and complete scripts put their fast paths
//! (`lua/claim_fast.lua`, `lua/complete_fast.lua`) between the two, so that
//! the common case defines none of the shared helpers.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Arg, Cmd, ErrorKind, RedisResult, Script, ServerErrorKind, ToRedisArgs, Value};

const PRELUDE: &str = include_str!("../lua/prelude.lua");
const COMMON: &str = include_str!("../lua/common.lua");

/// A script: its text (for `EVAL`) and its SHA-1 (for `EVALSHA`).
pub(crate) struct Lua {
    code: String,
    script: Script,
}

impl Lua {
    fn new(code: String) -> Self {
        let script = Script::new(&code);
        Self { code, script }
    }

    /// The SHA-1 that `EVALSHA` names.
    pub(crate) fn hash(&self) -> &str {
        self.script.get_hash()
    }

    /// Loads the script into the server's script cache (`SCRIPT LOAD`).
    pub(crate) async fn load(&self, con: &mut impl ConnectionLike) -> RedisResult<String> {
        self.script.load_async(con).await
    }
}

fn build(body: &str) -> Lua {
    Lua::new([PRELUDE, "\n", COMMON, "\n", body].concat())
}

/// A script whose fast path runs before the shared helpers and the general path.
fn build_fast(fast: &str, body: &str) -> Lua {
    Lua::new([PRELUDE, "\n", fast, "\n", COMMON, "\n", body].concat())
}

/// The claim script: the replay and new-key fast paths, then the shared
/// helpers and the general path.
pub(crate) static CLAIM: LazyLock<Lua> = LazyLock::new(|| {
    build_fast(
        include_str!("../lua/claim_fast.lua"),
        include_str!("../lua/claim.lua"),
    )
});

/// The complete script: the own-lease fast path, then the shared helpers
/// and the general path.
pub(crate) static COMPLETE: LazyLock<Lua> = LazyLock::new(|| {
    build_fast(
        include_str!("../lua/complete_fast.lua"),
        include_str!("../lua/complete.lua"),
    )
});

macro_rules! scripts {
    ($($name:ident => $file:literal),* $(,)?) => {
        $(
            pub(crate) static $name: LazyLock<Lua> =
                LazyLock::new(|| build(include_str!(concat!("../lua/", $file))));
        )*
        /// Every script, for preloading.
        pub(crate) fn all() -> [&'static Lua; 10] {
            [&*CLAIM, &*COMPLETE, $(&*$name),*]
        }
    };
}

scripts! {
    FAIL => "fail.lua",
    RELEASE => "release.lua",
    RENEW => "renew.lua",
    GET => "get.lua",
    MARK_CORRUPTED => "mark_corrupted.lua",
    RESOLVE => "resolve.lua",
    ADMIN_READ => "admin_read.lua",
    PURGE => "purge.lua",
}

/// One `EVALSHA` of a script on its record's keys, its arguments written
/// straight into the command buffer.
pub(crate) struct Eval {
    script: &'static Lua,
    cmd: Cmd,
}

impl Eval {
    /// `EVALSHA <sha> 1 <key>`; the arguments follow with [`Eval::arg`].
    pub(crate) fn new(script: &'static Lua, key: impl ToRedisArgs) -> Self {
        let mut cmd = Cmd::with_capacity(12, 256);
        cmd.arg("EVALSHA").arg(script.hash()).arg(1).arg(key);
        Self { script, cmd }
    }

    /// `EVALSHA <sha> 2 <key> <floor>`: a script that also keeps the
    /// record's fence floor (a key in the record's hash slot).
    pub(crate) fn with_floor(
        script: &'static Lua,
        key: impl ToRedisArgs,
        floor: impl ToRedisArgs,
    ) -> Self {
        let mut cmd = Cmd::with_capacity(13, 320);
        cmd.arg("EVALSHA")
            .arg(script.hash())
            .arg(2)
            .arg(key)
            .arg(floor);
        Self { script, cmd }
    }

    /// Appends the next `ARGV` value.
    pub(crate) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    /// Runs the script. If the server does not know it (`NOSCRIPT`: its
    /// script cache was flushed, or a failover moved the keys to a node that
    /// never loaded it), the script's text is sent with `EVAL`, which runs
    /// it and caches it in one command. A `NOSCRIPT` reply never reaches the
    /// caller: nothing can flush the cache between loading and running.
    pub(crate) async fn invoke(&self, con: &mut impl ConnectionLike) -> RedisResult<Value> {
        match self.cmd.query_async::<Value>(con).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                metrics::counter!("idempotency_redis_noscript_total").increment(1);
                self.eval_cmd().query_async(con).await
            }
            other => other,
        }
    }

    /// The same invocation as `EVAL <text> <numkeys> <keys> <args>`.
    fn eval_cmd(&self) -> Cmd {
        let mut cmd = Cmd::with_capacity(13, self.script.code.len() + 512);
        cmd.arg("EVAL").arg(self.script.code.as_str());
        // Everything after `EVALSHA <sha>`: key count, keys, arguments.
        for arg in self.cmd.args_iter().skip(2) {
            if let Arg::Simple(bytes) = arg {
                cmd.arg(bytes);
            }
        }
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eval_fallback_sends_the_same_keys_and_arguments() {
        let mut inv = Eval::with_floor(&COMPLETE, "idem:{ab}", "idem:{ab}:fence");
        inv.arg(7u64).arg(b"\x00\xff".as_slice()).arg("x");
        let sha: Vec<Vec<u8>> = inv.cmd.args_iter().map(simple).collect();
        let eval: Vec<Vec<u8>> = inv.eval_cmd().args_iter().map(simple).collect();
        assert_eq!(sha[0], b"EVALSHA");
        assert_eq!(sha[1], COMPLETE.hash().as_bytes());
        assert_eq!(eval[0], b"EVAL");
        assert_eq!(eval[1], COMPLETE.code.as_bytes());
        assert_eq!(sha[2..], eval[2..]);
        assert_eq!(
            eval[2..],
            [
                b"2".to_vec(),
                b"idem:{ab}".to_vec(),
                b"idem:{ab}:fence".to_vec(),
                b"7".to_vec(),
                b"\x00\xff".to_vec(),
                b"x".to_vec(),
            ]
        );
    }

    fn simple(arg: Arg<&[u8]>) -> Vec<u8> {
        match arg {
            Arg::Simple(b) => b.to_vec(),
            _ => panic!("only plain arguments"),
        }
    }
}
