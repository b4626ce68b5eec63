# shellcheck shell=bash
# A trimmed static OpenSSL for the agent, sourced by build.sh and sizes.sh.
#
# libssh2 needs only part of libcrypto, but OpenSSL 3's providers register every algorithm, so the
# linker keeps them all: on aarch64 the SM2 precomputed table alone is 512 KiB. openssl-src (what the
# `vendored-openssl` feature builds) offers no way to pass Configure options, so this builds the same
# OpenSSL source (the openssl-src version Cargo.lock pins, from cargo's registry cache) with zig and the
# options below, and points openssl-sys at it (<TARGET>_OPENSSL_DIR, static). Figures in SIZES.md.
#
# Kept: everything libssh2 negotiates with OpenSSH (curve25519/ECDH/DH kex; Ed25519, ECDSA, RSA keys;
# AES-CTR/GCM/CBC; HMAC-SHA1/SHA2; chacha20-poly1305 is libssh2's own). Dropped: algorithms and
# formats an SSH client never uses, plus ssh-dss, 3des-cbc and hmac-ripemd160, which libssh2 then leaves
# out by itself (it checks OPENSSL_NO_DSA/DES/RMD160) and OpenSSH no longer offers by default.

# shellcheck disable=SC2034  # used by the scripts that source this file
OPENSSL_TRIM=(
  no-shared no-module no-tests no-apps no-docs no-comp no-zlib no-zlib-dynamic no-engine no-async
  no-legacy no-ssl3 no-md2 no-rc5 no-weak-ssl-ciphers no-camellia no-idea no-seed
  no-sm2 no-sm3 no-sm4 no-aria no-bf no-cast no-rc2 no-rc4 no-whirlpool no-des no-rmd160 no-dsa
  no-ec2m no-slh-dsa no-ml-dsa no-ml-kem no-lms no-scrypt no-argon2 no-siv no-ocb no-srp
  no-cms no-ts no-ocsp no-ct no-cmp no-dtls no-quic
)

# The zig target and CPU for a Rust target (the CPUs cargo-zigbuild uses, so C and Rust agree).
openssl_zig_target() {
  case $1 in
    aarch64-unknown-linux-musl)     echo "-target aarch64-linux-musl" ;;
    armv7-unknown-linux-musleabihf) echo "-target arm-linux-musleabihf -mcpu=generic+v7a+vfp3-d32+thumb2-neon" ;;
    arm-unknown-linux-musleabihf)   echo "-target arm-linux-musleabihf -mcpu=generic+v6+strict_align+vfp2-d32" ;;
    x86_64-unknown-linux-musl)      echo "-target x86_64-linux-musl" ;;
    *) return 1 ;;
  esac
}

openssl_configure_target() {
  case $1 in
    aarch64-*) echo linux-aarch64 ;;
    arm*-*)    echo linux-armv4 ;;   # what openssl-src uses too; ARMv7 code is picked at run time
    x86_64-*)  echo linux-x86_64 ;;
    *) return 1 ;;
  esac
}

# trimmed_openssl TARGET TARGET_DIR CFLAGS...: prints the install prefix, building it on first use.
trimmed_openssl() {
  local target=$1 target_dir=$2; shift 2
  local cflags="$*"
  local ver src zig key dir
  ver=$(awk '/^name = "openssl-src"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
  [[ -n $ver ]] || { echo "openssl-src is not in Cargo.lock" >&2; return 1; }
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"openssl-src-$ver"/openssl 2>/dev/null | head -1)
  if [[ -z $src ]]; then   # not unpacked yet: fetch the crate, unpack it where cargo would
    cargo fetch --quiet >&2 || return 1
    src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"openssl-src-$ver"/openssl 2>/dev/null | head -1)
    if [[ -z $src ]]; then
      local crate
      crate=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"openssl-src-$ver.crate" | head -1) || return 1
      mkdir -p "$target_dir/openssl-trimmed" && tar -xzf "$crate" -C "$target_dir/openssl-trimmed" || return 1
      src="$target_dir/openssl-trimmed/openssl-src-$ver/openssl"
    fi
  fi
  if command -v zig >/dev/null; then zig=$(command -v zig); else zig="$(command -v python3) -m ziglang"; fi
  key=$(printf '%s\n' "$ver" "${OPENSSL_TRIM[*]}" "$cflags" "$(openssl_zig_target "$target")" \
    "$($zig version)" | sha256sum | cut -c1-12)
  dir="$target_dir/openssl-trimmed/$target-$key"
  if [[ ! -f $dir/install/lib/libcrypto.a ]]; then
    echo "building trimmed OpenSSL $ver for $target in $dir …" >&2
    rm -rf "$dir" && mkdir -p "$dir" && cp -r "$src" "$dir/src" || return 1
    printf '#!/bin/sh\nexec %s cc -fno-sanitize=all %s "$@"\n' "$zig" "$(openssl_zig_target "$target")" >"$dir/cc"
    printf '#!/bin/sh\nexec %s ar "$@"\n' "$zig" >"$dir/ar"
    printf '#!/bin/sh\nexec %s ranlib "$@"\n' "$zig" >"$dir/ranlib"
    chmod +x "$dir/cc" "$dir/ar" "$dir/ranlib"
    # shellcheck disable=SC2086  # cflags are words on purpose
    if ! (cd "$dir/src" \
      && env -u CROSS_COMPILE CC="$dir/cc" AR="$dir/ar" RANLIB="$dir/ranlib" perl ./Configure \
           --prefix="$dir/install" --openssldir=/usr/local/ssl --libdir=lib "${OPENSSL_TRIM[@]}" \
           "$(openssl_configure_target "$target")" -ffunction-sections -fdata-sections -fPIC -w $cflags \
           -DOPENSSL_NO_SECURE_MEMORY \
      && make -j"$(nproc)" build_libs && make install_dev) >"$dir/build.log" 2>&1; then
      tail -30 "$dir/build.log" >&2
      echo "OpenSSL build failed; full log: $dir/build.log" >&2
      return 1
    fi
    rm -rf "$dir/src"
  fi
  echo "$dir/install"
}
