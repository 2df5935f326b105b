import Foundation
import SessionProtocol
import TestThreads
import Testing

/// The protocol's Codable results write the bytes the dynamic encoder wrote before them (clients parse what they
/// always got), `null` where a value is unknown and nothing where a part is not the caller's; and read back what
/// they wrote.
@Suite(.ownThread) struct RPCResultTests {
    let now = Date(timeIntervalSince1970: 1_796_000_000.5)
    var stamp: String { JSONText.timestamp(now) }

    @Test func contextStatusWritesNullsAsTheDictionariesDid() throws {
        let unknown = RPCResult.ContextStatus(context: "user-42", kind: "oauth", state: "bootstrapping", userId: nil, generation: 0,
                                              expiresAt: nil, renewAt: nil, lastRenewedAt: nil, consecutiveFailures: 0,
                                              nextRetryAt: nil, lastError: nil, reason: nil)
        let dictionary: [String: Any] = [
            "context": "user-42", "kind": "oauth", "state": "bootstrapping", "user_id": NSNull(), "generation": 0,
            "expires_at": NSNull(), "renew_at": NSNull(), "last_renewed_at": NSNull(), "consecutive_failures": 0,
            "next_retry_at": NSNull(), "last_error": NSNull(), "reason": NSNull(),
        ]
        #expect(RPCJSON.encode(unknown) == foundationJSON(dictionary))
        let live = RPCResult.ContextStatus(context: "ops", kind: "api_key", state: "live", userId: 7, generation: 3, expiresAt: now,
                                           renewAt: now, lastRenewedAt: now, consecutiveFailures: 2, nextRetryAt: now,
                                           lastError: "bunq said: \"no\" / 429 – slow down", reason: "a/b")
        let liveDictionary: [String: Any] = [
            "context": "ops", "kind": "api_key", "state": "live", "user_id": 7, "generation": 3, "expires_at": stamp,
            "renew_at": stamp, "last_renewed_at": stamp, "consecutive_failures": 2, "next_retry_at": stamp,
            "last_error": "bunq said: \"no\" / 429 – slow down", "reason": "a/b",
        ]
        #expect(RPCJSON.encode(live) == foundationJSON(liveDictionary))
        #expect(try RPCJSON.decode(RPCResult.ContextStatus.self, from: Data(RPCJSON.encode(live).utf8)) == live)
        #expect(try RPCJSON.decode(RPCResult.ContextStatus.self, from: Data(RPCJSON.encode(unknown).utf8)) == unknown)
    }

    @Test func daemonStatusLeavesOutWhatIsNotTheCallersAndRoundsAsBefore() throws {
        for (available, late, cluster, state) in [(Double?.none, Int?.none, false, false), (2_880.0, 3, true, true), (1_234.5, nil, false, true)] {
            let status = RPCResult.DaemonStatus(
                version: "1.2.3", uptimeSeconds: 61, ready: true, starting: false,
                contexts: ["live": 2, "retrying": 0, "total": 2], nextRenewalAt: state ? now : nil,
                budget: .init(sessionServer: .init(neededPerDay: 12.0, availablePerDay: available, utilisation: 0.667,
                                                   willRunLate: late)),
                cluster: cluster ? .init(instance: "a", egressGroup: "g", leasesHeld: 4, storeReachable: true,
                                         members: [.init(instance: "a", egressGroup: "g", leases: 4)]) : nil,
                store: .init(backend: "postgresql", reachable: false, failingSince: now, consecutiveFailures: 5),
                state: state ? .init(backend: "sqlite", directory: "/var/lib/bunq-sessiond", lastError: nil) : nil)
            var budget: [String: Any] = ["needed_per_day": 12.0, "available_per_day": available.map { $0 as Any } ?? NSNull(),
                                         "utilisation": 0.667]
            if let late { budget["will_run_late"] = late }
            var dictionary: [String: Any] = [
                "version": "1.2.3", "uptime_seconds": 61, "ready": true, "starting": false,
                "contexts": ["live": 2, "retrying": 0, "total": 2],
                "next_renewal_at": state ? stamp as Any : NSNull(), "budget": ["session_server": budget],
                "store": ["backend": "postgresql", "reachable": false, "failing_since": stamp, "consecutive_failures": 5] as [String: Any],
            ]
            if cluster {
                dictionary["cluster"] = ["instance": "a", "egress_group": "g", "leases_held": 4, "store_reachable": true,
                                         "members": [["instance": "a", "egress_group": "g", "leases": 4]]] as [String: Any]
            }
            if state { dictionary["state"] = ["backend": "sqlite", "directory": "/var/lib/bunq-sessiond", "last_error": NSNull()] as [String: Any] }
            let written = RPCJSON.encode(status)
            #expect(written == foundationJSON(dictionary))
            #expect(written.contains("\"cluster\"") == cluster && written.contains("\"state\":{") == state)
            #expect(written.contains("will_run_late") == (late != nil))
            #expect(try RPCJSON.decode(RPCResult.DaemonStatus.self, from: Data(written.utf8)) == status)
        }
    }

    @Test func theSmallResultsAndNotificationsMatchToo() throws {
        #expect(RPCJSON.encode(RPCResult.Renewal(generation: 4, expiresAt: now, renewed: false))
            == foundationJSON(["generation": 4, "expires_at": stamp, "renewed": false] as [String: Any]))
        #expect(RPCJSON.encode(RPCResult.ContextList(contexts: [
            .init(name: "provider", kind: "provider", state: "live", userId: 9, expiresAt: now, renewAt: nil),
        ])) == foundationJSON(["contexts": [["name": "provider", "kind": "provider", "state": "live", "user_id": 9,
                                              "expires_at": stamp, "renew_at": NSNull()] as [String: Any]]]))
        #expect(RPCJSON.encode(RPCResult.AuthorizeURL(url: "https://oauth.bunq.com/auth?a=b&c=d", state: "s", expiresAt: now))
            == foundationJSON(["url": "https://oauth.bunq.com/auth?a=b&c=d", "state": "s", "expires_at": stamp]))
        #expect(String(decoding: RPCCodec.notification("session.rotated", RPCNotification.Rotated(
            context: "ops", generation: 2, token: "t", expiresAt: now)), as: UTF8.self)
            == #"{"jsonrpc":"2.0","method":"session.rotated","params":{"context":"ops","expires_at":"\#(stamp)","generation":2,"token":"t"}}"# + "\n")
        #expect(String(decoding: RPCCodec.error(id: .number("3"), .sessionUnavailable, "x", data: ["state": "renewing", "retry_at": stamp]),
                       as: UTF8.self)
            == #"{"jsonrpc":"2.0","id":3,"error":{"code":1003,"message":"x","data":{"retry_at":"\#(stamp)","state":"renewing"}}}"# + "\n")
    }

    /// `session.get` is written by hand on the token path; clients read it with `RPCResult.Session`.
    @Test func theTokenPathsHandWrittenResultReadsAsASession() throws {
        let line = #"{"context":"ops","token":"abc","user_id":7,"expires_at":"\#(stamp)","renew_at":null,"generation":1,"server_public_key":null}"#
        let session = try RPCJSON.decode(RPCResult.Session.self, from: Data(line.utf8))
        #expect(session == .init(context: "ops", token: "abc", userId: 7, expiresAt: now, renewAt: nil, generation: 1, serverPublicKey: nil))
        #expect(throws: DecodingError.self) {
            try RPCJSON.decode(RPCResult.Session.self, from: Data(line.replacingOccurrences(of: stamp, with: "yesterday").utf8))
        }
    }
}

/// What the daemon wrote before the Codable results: Foundation's dynamic encoder, compact, keys sorted, slashes
/// unescaped. The yardstick the results above must match byte for byte.
private func foundationJSON(_ object: Any) -> String {
    guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .fragmentsAllowed,
                                                                                   .withoutEscapingSlashes]) else {
        return "null"
    }
    return String(decoding: data, as: UTF8.self)
}
