//! The Lua scripts, embedded from `lua/*.lua` and run with `EVALSHA`
//! (loaded on `NOSCRIPT`). Each is prefixed with `lua/common.lua`; the claim
//! script starts with its replay fast path, `lua/claim_replay.lua`, before it.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, RedisResult, Script, ServerErrorKind, ToRedisArgs, Value};

const COMMON: &str = include_str!("../lua/common.lua");

fn build(body: &str) -> Script {
    Script::new(&[COMMON, "\n", body].concat())
}

/// The claim script: the replay fast path, then the shared helpers and the general path.
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        &[
            include_str!("../lua/claim_replay.lua"),
            "\n",
            COMMON,
            "\n",
            include_str!("../lua/claim.lua"),
        ]
        .concat(),
    )
});

macro_rules! scripts {
    ($($name:ident => $file:literal),* $(,)?) => {
        $(
            pub(crate) static $name: LazyLock<Script> =
                LazyLock::new(|| build(include_str!(concat!("../lua/", $file))));
        )*
        /// Every script, for preloading.
        pub(crate) fn all() -> [&'static Script; 8] {
            [&*CLAIM, $(&*$name),*]
        }
    };
}

scripts! {
    COMPLETE => "complete.lua",
    FAIL => "fail.lua",
    RELEASE => "release.lua",
    RENEW => "renew.lua",
    GET => "get.lua",
    MARK_CORRUPTED => "mark_corrupted.lua",
    RESOLVE => "resolve.lua",
}

/// One `EVALSHA` of a script on its one key, its arguments written straight
/// into the command buffer. What `Script::prepare_invoke` sends, without a
/// buffer per argument.
pub(crate) struct Eval {
    script: &'static Script,
    cmd: Cmd,
}

impl Eval {
    /// `EVALSHA <sha> 1 <key>`; the arguments follow with [`Eval::arg`].
    pub(crate) fn new(script: &'static Script, key: impl ToRedisArgs) -> Self {
        let mut cmd = Cmd::with_capacity(12, 256);
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(1).arg(key);
        Self { script, cmd }
    }

    /// `EVALSHA <sha> 2 <key> <floor>`: a script that also keeps the
    /// record's fence floor (a key in the record's hash slot).
    pub(crate) fn with_floor(
        script: &'static Script,
        key: impl ToRedisArgs,
        floor: impl ToRedisArgs,
    ) -> Self {
        let mut cmd = Cmd::with_capacity(13, 320);
        cmd.arg("EVALSHA")
            .arg(script.get_hash())
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

    /// Runs the script, loading it first if the server does not know it
    /// (`NOSCRIPT`), as `ScriptInvocation::invoke_async` does.
    pub(crate) async fn invoke(&self, con: &mut impl ConnectionLike) -> RedisResult<Value> {
        match self.cmd.query_async::<Value>(con).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                Box::pin(self.script.load_async(con)).await?;
                self.cmd.query_async(con).await
            }
            other => other,
        }
    }
}
