//! Typed configuration a Wasm workload can set through its container
//! environment (image `ENV`, `ctr run --env`, a pod's `env:`).
//!
//! Every variable is a documented constant below. Variables with the
//! [`ENV_PREFIX`] that the shim does not know are rejected, so a misspelt
//! name is reported instead of silently ignored. The variables are still
//! passed to the guest like any other environment variable.

use std::net::SocketAddr;

/// Prefix reserved for wasmhybrid's own variables.
pub const ENV_PREFIX: &str = "WASMHYBRID_";

/// Address a `wasi:http/proxy` component is served on, inside the
/// container's network namespace: `IP:PORT`, e.g. `127.0.0.1:9000`.
pub const ENV_HTTP_ADDR: &str = "WASMHYBRID_HTTP_ADDR";

/// Default for [`ENV_HTTP_ADDR`].
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";

/// All variables this shim reads.
pub const KNOWN_ENV: &[&str] = &[ENV_HTTP_ADDR];

/// Why a workload's configuration was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid {var}={value:?}: {reason}")]
    InvalidValue {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("unknown variable {var} (known wasmhybrid variables: {known})", known = KNOWN_ENV.join(", "))]
    UnknownVariable { var: String },
}

/// The parsed configuration of one Wasm workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadConfig {
    /// Where a `wasi:http/proxy` component listens.
    pub http_addr: SocketAddr,
}

impl WorkloadConfig {
    /// Parses the container's `KEY=VALUE` environment.
    pub fn from_env<S: AsRef<str>>(envs: &[S]) -> Result<Self, ConfigError> {
        let mut http_addr = None;
        for entry in envs {
            let (key, value) = entry
                .as_ref()
                .split_once('=')
                .unwrap_or((entry.as_ref(), ""));
            if !key.starts_with(ENV_PREFIX) {
                continue;
            }
            match key {
                ENV_HTTP_ADDR => {
                    let addr =
                        value
                            .parse::<SocketAddr>()
                            .map_err(|e| ConfigError::InvalidValue {
                                var: ENV_HTTP_ADDR,
                                value: value.to_string(),
                                reason: format!("{e} (expected IP:PORT, e.g. 0.0.0.0:8080)"),
                            })?;
                    http_addr = Some(addr);
                }
                other => {
                    return Err(ConfigError::UnknownVariable {
                        var: other.to_string(),
                    });
                }
            }
        }
        Ok(Self {
            http_addr: http_addr.unwrap_or_else(default_http_addr),
        })
    }
}

fn default_http_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_address_matches_documented_default() {
        let cfg = WorkloadConfig::from_env(&["PATH=/bin"]).expect("valid");
        assert_eq!(cfg.http_addr.to_string(), DEFAULT_HTTP_ADDR);
    }

    #[test]
    fn address_is_configurable() {
        let cfg =
            WorkloadConfig::from_env(&["WASMHYBRID_HTTP_ADDR=127.0.0.1:9000"]).expect("valid");
        assert_eq!(cfg.http_addr, SocketAddr::from(([127, 0, 0, 1], 9000)));
        let cfg = WorkloadConfig::from_env(&["WASMHYBRID_HTTP_ADDR=[::1]:81"]).expect("valid");
        assert_eq!(cfg.http_addr.port(), 81);
    }

    #[test]
    fn bad_address_is_rejected_not_defaulted() {
        let err = WorkloadConfig::from_env(&["WASMHYBRID_HTTP_ADDR=8080"]).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::InvalidValue {
                var: ENV_HTTP_ADDR,
                ..
            }
        ));
        assert!(
            err.to_string().contains("WASMHYBRID_HTTP_ADDR=\"8080\""),
            "{err}"
        );
    }

    #[test]
    fn misspelt_variable_is_reported() {
        let err = WorkloadConfig::from_env(&["WASMHYBRID_HTTP_ADRR=0.0.0.0:1"]).unwrap_err();
        assert_eq!(
            err,
            ConfigError::UnknownVariable {
                var: "WASMHYBRID_HTTP_ADRR".into()
            }
        );
        assert!(err.to_string().contains(ENV_HTTP_ADDR));
    }
}
