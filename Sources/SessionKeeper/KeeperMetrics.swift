import BunqAPI
import Foundation
import Metrics

/// The keeper's metrics (swift-metrics; a no-op until the daemon bootstraps a backend). No user id, token or
/// key in a label: contexts appear by name only where they are configured (provider, API keys).
public enum KeeperMetrics {
    /// `bunq_sessiond_renewals_total{kind,result}`, once per renewal outcome.
    static func renewal(kind: StoredContext.Kind?, result: String) {
        Counter(label: "bunq_sessiond_renewals_total",
                dimensions: [("kind", kind?.rawValue ?? "unknown"), ("result", result)]).increment()
    }

    /// `bunq_sessiond_renewal_lag_seconds`: how much later than planned a renewal's session-server call started
    /// (a retry's plan is its backoff): waiting for the session-server budget shows here first.
    static func renewalLag(_ seconds: TimeInterval) {
        Timer(label: "bunq_sessiond_renewal_lag_seconds").recordNanoseconds(Int64(max(0, seconds) * 1e9))
    }

    /// A failed renewal by what it means for an operator: ok, transient, rate_limited, session_invalid,
    /// needs_attention.
    static func result(_ error: RenewalError) -> String {
        if error.kind == .needsAttention { return "needs_attention" }
        switch error.code {
        case .bunq(.rateLimited): return "rate_limited"
        case .bunq(.sessionInvalid): return "session_invalid"
        default: return "transient"
        }
    }

    /// What a scrape reports about the contexts, from the keeper's own state (never the socket's hot path).
    public struct Snapshot: Sendable {
        /// Contexts per kind and state.
        public var contexts: [StoredContext.Kind: [ContextState: Int]]
        /// Session expiry of each configured (provider, API-key) context that has a usable session.
        public var configuredExpiry: [String: Date]
        /// The earliest session expiry among OAuth users, if any has a session.
        public var oauthMinExpiry: Date?
        public var budgetUtilisation: Double
        public var egressGroup: String
        public var leasesHeld: Int?
    }
}

extension Keeper {
    /// The figures a scrape reports, read from the registry in one pass, off the token path (nothing here takes
    /// the lock the token path reads under).
    public func metricsSnapshot() async -> KeeperMetrics.Snapshot {
        var contexts: [StoredContext.Kind: [ContextState: Int]] = [:]
        var configured: [String: Date] = [:]
        var oauthMin: Date?
        for (name, kind, expiry, state) in await registry.kindsExpiryAndStates() {
            contexts[kind, default: [:]][state, default: 0] += 1
            let usable = [.live, .renewing, .retrying].contains(state)
            if kind == .oauthUser {
                if let expiry, usable { oauthMin = min(oauthMin ?? expiry, expiry) }
            } else if let expiry, usable {
                configured[name] = expiry
            }
        }
        return KeeperMetrics.Snapshot(contexts: contexts, configuredExpiry: configured, oauthMinExpiry: oauthMin,
                                      budgetUtilisation: budget.utilisation,
                                      egressGroup: configuration.cluster?.egressGroup ?? "local",
                                      leasesHeld: cluster == nil ? nil : await registry.leaseCount)
    }
}
