//! The Lua scripts, embedded from `lua/*.lua` and run with `EVALSHA`
//! (loaded on `NOSCRIPT`). Each is prefixed with `lua/common.lua`.

use std::sync::LazyLock;

use redis::Script;

const COMMON: &str = include_str!("../lua/common.lua");

fn build(body: &str) -> Script {
    Script::new(&[COMMON, "\n", body].concat())
}

macro_rules! scripts {
    ($($name:ident => $file:literal),* $(,)?) => {
        $(
            pub(crate) static $name: LazyLock<Script> =
                LazyLock::new(|| build(include_str!(concat!("../lua/", $file))));
        )*
        /// Every script, for preloading.
        pub(crate) fn all() -> [&'static Script; 8] {
            [$(&*$name),*]
        }
    };
}

scripts! {
    CLAIM => "claim.lua",
    COMPLETE => "complete.lua",
    FAIL => "fail.lua",
    RELEASE => "release.lua",
    RENEW => "renew.lua",
    GET => "get.lua",
    MARK_CORRUPTED => "mark_corrupted.lua",
    RESOLVE => "resolve.lua",
}
