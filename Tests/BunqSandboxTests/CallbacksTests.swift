import BunqCrypto
import BunqSandbox
import Foundation
import Synchronization
import TestSupport
import TestThreads
import Testing

/// Callbacks: notification filters at user and account level, bunq's `NotificationUrl` body signed with the
/// installation's server key over its exact bytes, retries a short interval apart (`callbackRetrySeconds`, bunq's
/// minute scaled), and bunq's HTTPS rule with the emulator's loopback exception.
@Suite(.ownThread) struct CallbacksTests {
    /// What a receiver got: path, signature header and body bytes, in order.
    final class Received: Sendable {
        let calls = Mutex<[(path: String, signature: String?, body: [UInt8])]>([])
        /// Paths that answer 503 this many more times before 200.
        let failures = Mutex<[String: Int]>([:])

        func handle(_ request: ServerRequest) -> ServerResponse {
            calls.withLock { $0.append((request.path, request.header("X-Bunq-Server-Signature"), request.body)) }
            let fail = failures.withLock { failures -> Bool in
                guard let left = failures[request.path], left != 0 else { return false }
                failures[request.path] = left - 1
                return true
            }
            return ServerResponse(status: fail ? 503 : 200)
        }

        func bodies(_ path: String) -> [[String: Any]] {
            calls.withLock { $0 }.filter { $0.path == path }.compactMap {
                ((try? JSONSerialization.jsonObject(with: Data($0.body))) as? [String: Any])?["NotificationUrl"] as? [String: Any]
            }
        }
    }

    /// Runs `body` with an emulator whose callback retries are 0.2 s apart and a receiver on loopback.
    static func withReceiver(_ body: @escaping @Sendable (inout SandboxTestClient, Received, String) async throws -> Void)
        async throws {
        let received = Received()
        try await withBoundServer(of: { onBound in
            try await HTTPServerCore.serve(host: "127.0.0.1", port: 0, handler: { received.handle($0) }, onBound: onBound)
        }) { port in
            // Limits off: these check delivery, order and retries, many calls a second from one IP; callbacks
            // under bunq's limits are ProxyMoneyTests'.
            var configuration = SandboxConfiguration(rateLimits: false)
            configuration.callbackRetrySeconds = 0.2
            try await BunqSandbox.test(configuration) { client in
                try await body(&client, received, "http://127.0.0.1:\(port)")
            }
        }
    }

    static func filters(_ client: SandboxTestClient, _ path: String, token: String,
                        _ filters: [(String, String)]) async throws -> SandboxTestClient.Reply {
        try await client.call("POST", path + "/notification-filter-url", [
            "notification_filters": filters.map { ["category": $0.0, "notification_target": $0.1] },
        ], token: token)
    }

    @Test func paymentsCallBackBothHoldersSignedOverTheExactBody() async throws {
        try await Self.withReceiver { client, received, receiver in
            let alice = try await PaymentsTests.holder(&client)
            let bob = try await PaymentsTests.holder(&client)
            let set = try await Self.filters(client, "/v1/user/\(alice.userId)", token: alice.token,
                                             [("PAYMENT", receiver + "/alice"), ("MUTATION", receiver + "/alice-mutation")])
            #expect(set.status == 200, "\(set.error ?? "")")
            #expect(set.items.map(\.0) == ["NotificationFilterUrl", "NotificationFilterUrl"])
            #expect(try await Self.filters(client, bob.account, token: bob.token, [("PAYMENT", receiver + "/bob")]).status == 200)
            let listed = try await client.call("GET", bob.account + "/notification-filter-url", token: bob.token)
            #expect(listed.items.first?.1["notification_target"] as? String == receiver + "/bob")

            _ = try await PaymentsTests.pay(client, alice, "7.50", to: ["type": "IBAN", "value": bob.iban], description: "cb")
            #expect(await eventually(within: .seconds(10)) {
                received.bodies("/alice").count == 1 && received.bodies("/bob").count == 1
                    && received.bodies("/alice-mutation").count == 1
            }, "\(received.calls.withLock { $0.map { $0.path } })")
            let sent = try #require(received.bodies("/alice").first)
            #expect(sent["category"] as? String == "PAYMENT" && sent["event_type"] as? String == "PAYMENT_CREATED")
            #expect(sent["target_url"] as? String == receiver + "/alice")
            let payment = try #require((sent["object"] as? [String: Any])?["Payment"] as? [String: Any])
            #expect((payment["amount"] as? [String: Any])?["value"] as? String == "-7.50")
            let got = try #require(received.bodies("/bob").first)
            #expect(got["event_type"] as? String == "PAYMENT_RECEIVED")
            #expect((((got["object"] as? [String: Any])?["Payment"] as? [String: Any])?["amount"] as? [String: Any])?["value"]
                as? String == "7.50")
            #expect(received.bodies("/alice-mutation").first?["category"] as? String == "MUTATION")

            // The signature is the installation's server key over the body's exact bytes.
            let serverKey = try #require(client.serverKey)
            for call in received.calls.withLock({ $0 }) {
                let signature = try #require(call.signature, "every callback is signed")
                try serverKey.verify(base64Signature: signature, for: Data(call.body))
            }

            // A new set replaces the old: with none, nothing more is called.
            #expect(try await Self.filters(client, "/v1/user/\(alice.userId)", token: alice.token, []).status == 200)
            #expect(try await client.call("GET", "/v1/user/\(alice.userId)/notification-filter-url", token: alice.token).items.isEmpty)
            _ = try await PaymentsTests.pay(client, alice, "1.00", to: ["type": "IBAN", "value": bob.iban])
            #expect(await eventually(within: .seconds(10)) { received.bodies("/bob").count == 2 })
            #expect(received.bodies("/alice").count == 1)
        }
    }

    @Test func aTargetThatFailsIsTriedFiveMoreTimes() async throws {
        try await Self.withReceiver { client, received, receiver in
            let alice = try await PaymentsTests.holder(&client)
            received.failures.withLock { $0 = ["/flaky": 2, "/down": -1] }
            #expect(try await Self.filters(client, alice.account, token: alice.token,
                                           [("REQUEST", receiver + "/flaky"), ("REQUEST", receiver + "/down")]).status == 200)
            _ = try await client.call("POST", alice.account + "/request-inquiry", [
                "amount_inquired": ["value": "5.00", "currency": "EUR"],
                "counterparty_alias": ["type": "EMAIL", "value": "sugardaddy@bunq.com"], "description": "x", "allow_bunqme": false,
            ], token: alice.token)
            // Two events (created, accepted) to each target; /flaky answers 200 on its third try, /down never.
            func log() async throws -> [[String: Any]] {
                try await client.admin("GET", "callbacks")["callbacks"] as? [[String: Any]] ?? []
            }
            let settled = await eventually(within: .seconds(20)) {
                let records = (try? await log()) ?? []
                return records.count == 4 && records.allSatisfy { record in
                    record["target_url"] as? String == receiver + "/down" ? record["attempts"] as? Int == 6
                        : record["delivered"] as? Bool == true
                }
            }
            let records = try await log()
            #expect(settled, "\(records)")
            let flaky = records.filter { $0["target_url"] as? String == receiver + "/flaky" }
            #expect(flaky.map { $0["event_type"] as? String } == ["REQUEST_INQUIRY_CREATED", "REQUEST_INQUIRY_ACCEPTED"])
            #expect(flaky.allSatisfy { $0["delivered"] as? Bool == true })
            #expect(flaky.map { $0["attempts"] as? Int ?? 0 }.reduce(0, +) == 4, "two failures, then both delivered")
            let down = records.filter { $0["target_url"] as? String == receiver + "/down" }
            #expect(down.allSatisfy { $0["delivered"] as? Bool == false && $0["attempts"] as? Int == 6 && $0["last_result"] as? String == "503" })
            #expect(received.calls.withLock { $0 }.filter { $0.path == "/down" }.count == 12, "1 + 5 tries each, no more")
        }
    }

    @Test func draftPaymentsCallBackAndTargetsMustBeHTTPSOrLoopback() async throws {
        try await Self.withReceiver { client, received, receiver in
            let alice = try await PaymentsTests.holder(&client)
            let user = "/v1/user/\(alice.userId)"
            for (category, target, reason) in [("PAYMENT", "http://example.com/cb", "HTTPS only"),
                                               ("PAYMENT", "ftp://127.0.0.1/cb", "https://"),
                                               ("PAYMENTS", receiver, "must be one of"),
                                               ("PAYMENT", "not a url", "https://")] {
                let refused = try await Self.filters(client, user, token: alice.token, [(category, target)])
                #expect(refused.status == 400 && refused.error?.contains(reason) == true, "\(target): \(refused.error ?? "")")
            }
            #expect(try await Self.filters(client, user, token: alice.token, [("PAYMENT", "https://example.com/cb"),
                                                                               ("DRAFT_PAYMENT", receiver + "/draft")]).status == 200)
            let draft = try await DraftPaymentsTests.draft(client, alice, [("3.00", ["type": "IBAN", "value": "NL91ABNA0417164300",
                                                                                   "name": "Elsewhere"])])
            let id = try #require(draft.item("Id")?["id"] as? Int)
            #expect(try await DraftPaymentsTests.answer(client, id, "ACCEPTED").status == 200)
            #expect(await eventually(within: .seconds(10)) { received.bodies("/draft").count == 2 })
            #expect(received.bodies("/draft").map { $0["event_type"] as? String } == ["DRAFT_PAYMENT_CREATED", "DRAFT_PAYMENT_ACCEPTED"])
            let object = received.bodies("/draft").last?["object"] as? [String: Any]
            #expect((object?["DraftPayment"] as? [String: Any])?["status"] as? String == "ACCEPTED")
        }
    }
}
