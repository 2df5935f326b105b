import Metrics
import SessionProtocol

/// `bunq_sessiond_rpc_requests_total{method,code}` and `bunq_sessiond_rpc_connections`, every counter made once
/// when the service starts: counting an answer is a lookup in an immutable table and an atomic add, with no lock,
/// so the token path pays nothing a scrape could contend with. Code 0 is a result; unknown methods count as
/// `other`, unparsable lines as `invalid`.
struct RPCMetrics: Sendable {
    private let counters: [String: [Int: Counter]]
    private let other: [Int: Counter]
    private let invalid: [Int: Counter]
    let connections = Meter(label: "bunq_sessiond_rpc_connections")
    /// The token path's two outcomes, looked up once.
    let sessionGetGranted: Counter
    let sessionGetUnknown: Counter

    init() {
        let codes = [0] + RPCErrorCode.allCases.map(\.rawValue)
        func table(_ method: String) -> [Int: Counter] {
            Dictionary(uniqueKeysWithValues: codes.map { code in
                (code, Counter(label: "bunq_sessiond_rpc_requests_total", dimensions: [("method", method), ("code", "\(code)")]))
            })
        }
        counters = Dictionary(uniqueKeysWithValues: RPCMethod.allCases.map { ($0.rawValue, table($0.rawValue)) })
        other = table("other")
        invalid = table("invalid")
        sessionGetGranted = counters[RPCMethod.sessionGet.rawValue]![0]!
        sessionGetUnknown = counters[RPCMethod.sessionGet.rawValue]![RPCErrorCode.unknownContext.rawValue]!
    }

    /// One answer to `method` (nil code: a result).
    func count(_ method: String, _ code: RPCErrorCode?) {
        (counters[method] ?? other)[code?.rawValue ?? 0]?.increment()
    }

    /// A line that is no request at all.
    func countInvalid(_ code: RPCErrorCode) { invalid[code.rawValue]?.increment() }
}
