import Metrics

/// The bunq client's metrics (swift-metrics; a no-op until the daemon bootstraps a backend). Labels are path
/// templates (`v1/user/{id}/oauth-client`), methods and status codes: never an id, a token or a key.
enum BunqMetrics {
    static func request(endpoint: String, method: String, code: String, duration: Duration) {
        Counter(label: "bunq_sessiond_bunq_requests_total",
                dimensions: [("endpoint", endpoint), ("method", method), ("code", code)]).increment()
        Timer(label: "bunq_sessiond_bunq_request_duration_seconds", dimensions: [("endpoint", endpoint), ("method", method)])
            .recordNanoseconds(duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }

    static func rateLimited(endpoint: String) {
        Counter(label: "bunq_sessiond_bunq_rate_limited_total", dimensions: [("endpoint", endpoint)]).increment()
    }
}
