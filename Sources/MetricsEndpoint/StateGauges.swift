import BunqAPI
import Foundation
import Prometheus
import SessionKeeper
import Synchronization

/// The gauges that describe the keeper's state, set from a snapshot. Every kind × state series exists (at 0
/// when empty), so an alert on `needs_attention` sees a value rather than no series; a configured context's
/// expiry series goes when it has no usable session (alerts watch its state then).
final class StateGauges: Sendable {
    private let registry: PrometheusCollectorRegistry
    private let expiries = Mutex<[String: Gauge]>([:])
    private let oauthExpiry = Mutex<Gauge?>(nil)

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        Self.gauge(registry, "build_info", "", "The running version (always 1)", [("version", BunqSessiondVersion.current)]).set(1.0)
    }

    /// `bunq_sessiond_NAME[_UNIT]` with its help text.
    static func gauge(_ registry: PrometheusCollectorRegistry, _ name: String, _ unit: String, _ help: String,
                      _ labels: [(String, String)] = []) -> Gauge {
        registry.makeGauge(descriptor: MetricNameDescriptor(namespace: "bunq_sessiond", metricName: name, unitName: unit,
                                                            helpText: help), labels: labels)
    }

    func update(_ snapshot: KeeperMetrics.Snapshot) {
        for kind in [StoredContext.Kind.provider, .apiKey, .oauthUser] {
            for state in ContextState.allCases where state != .removed {
                Self.gauge(registry, "contexts", "", "Contexts by kind and state", [("kind", kind.rawValue), ("state", state.rawValue)])
                    .set(Double(snapshot.contexts[kind]?[state] ?? 0))
            }
        }
        expiries.withLock { gauges in
            for (name, gauge) in gauges where snapshot.configuredExpiry[name] == nil {
                registry.unregisterGauge(gauge)
                gauges[name] = nil
            }
            for (name, expiry) in snapshot.configuredExpiry {
                let gauge = gauges[name] ?? Self.gauge(registry, "session_expiry_timestamp", "seconds",
                                                       "When the session of a configured context expires", [("context", name)])
                gauges[name] = gauge
                gauge.set(expiry.timeIntervalSince1970)
            }
        }
        oauthExpiry.withLock { gauge in
            if let expiry = snapshot.oauthMinExpiry {
                gauge = gauge ?? Self.gauge(registry, "oauth_session_expiry_min_timestamp", "seconds",
                                            "The earliest session expiry among OAuth users")
                gauge?.set(expiry.timeIntervalSince1970)
            } else if let existing = gauge {
                registry.unregisterGauge(existing)
                gauge = nil
            }
        }
        Self.gauge(registry, "session_server_budget_utilisation", "",
                   "Session-server calls needed a day over those available (above 1: renewals run late)",
                   [("egress_group", snapshot.egressGroup)])
            .set(snapshot.budgetUtilisation)
        if let leases = snapshot.leasesHeld {
            Self.gauge(registry, "leases_held", "", "Leases this daemon holds (a cluster)").set(Double(leases))
        }
    }
}
