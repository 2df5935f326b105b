import Foundation
import TestThreads
import Testing
import TestSupport

/// What an application does after reading accounts, through the daemon's proxy (the daemon signs) against the
/// sandbox with bunq's limits on (scaled by 0.1): money from the sandbox benefactor, a payment out, a batch, the
/// payments listed and the events they left, a draft payment the holder approves, and a PSD2 provider's payment
/// initiation.
@Suite(.ownThread) struct ProxyMoneyTests {
    static func json(_ reply: ProxyTests.Reply) -> [(String, [String: Any])] {
        ((reply.json?["Response"] as? [[String: Any]]) ?? []).compactMap { item in
            item.first.map { ($0.key, ($0.value as? [String: Any]) ?? [:]) }
        }
    }

    static func text(_ reply: ProxyTests.Reply) -> String { String(decoding: reply.body, as: UTF8.self) }

    /// The repository's callback receiver (scripts/callback-receiver.py), which the README shows developers.
    static let receiver = Binaries.directory.deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("scripts/callback-receiver.py").path

    @Test func anApplicationMovesMoneyThroughTheProxy() async throws {
        let (running, socket) = try await ProxyTests.start("""
            proxy:
              socket: \(RunningDaemonPaths.proxy)
              timeout: 10
            """, provider: true)
        defer { running.stop() }
        let dir = running.dir
        let userId = try #require(ProxyTests.userId(try ProxyTests.request(socket, dir, "/v1/user")))
        let accounts = try ProxyTests.request(socket, dir, "/v1/user/\(userId)/monetary-account-bank")
        let account = try #require(Self.json(accounts).first?.1)
        let accountId = try #require(account["id"] as? Int)
        let path = "/v1/user/\(userId)/monetary-account/\(accountId)"
        let iban = try #require((account["alias"] as? [[String: Any]])?.first?["value"] as? String)
        func balance() throws -> String? {
            let reply = try ProxyTests.request(socket, dir, path)
            return (Self.json(reply).first?.1["balance"] as? [String: Any])?["value"] as? String
        }
        #expect(try balance() == "1000.00")

        let asked = try ProxyTests.request(socket, dir, path + "/request-inquiry", method: "POST", body: """
            {"amount_inquired":{"value":"250.00","currency":"EUR"},"counterparty_alias":{"type":"EMAIL","value":"sugardaddy@bunq.com","name":"Sugar Daddy"},"description":"top up","allow_bunqme":false}
            """)
        #expect(asked.status == 200, "\(Self.text(asked))")
        let paid = try ProxyTests.request(socket, dir, path + "/payment", method: "POST", body: """
            {"amount":{"value":"40.10","currency":"EUR"},"counterparty_alias":{"type":"IBAN","value":"NL91ABNA0417164300","name":"Landlord"},"description":"rent"}
            """)
        #expect(paid.status == 200, "\(Self.text(paid))")
        let paymentId = try #require(Self.json(paid).first { $0.0 == "Id" }?.1["id"] as? Int)
        let batch = try ProxyTests.request(socket, dir, path + "/payment-batch", method: "POST", body: """
            {"payments":[{"amount":{"value":"1.00","currency":"EUR"},"counterparty_alias":{"type":"IBAN","value":"NL91ABNA0417164300","name":"A"},"description":"one"},{"amount":{"value":"2.00","currency":"EUR"},"counterparty_alias":{"type":"IBAN","value":"NL91ABNA0417164300","name":"B"},"description":"two"}]}
            """)
        #expect(batch.status == 200, "\(Self.text(batch))")
        #expect(try balance() == "1206.90", "1000.00 + 250.00 - 40.10 - 1.00 - 2.00")
        #expect(try running.sandbox.stat("rejected_signatures") == 0, "the daemon signed every body")

        let listed = try ProxyTests.request(socket, dir, path + "/payment?count=10")
        let descriptions = Self.json(listed).map { $0.1["description"] as? String }
        #expect(descriptions == ["two", "one", "rent", "top up"], "newest first: \(descriptions)")
        let one = try ProxyTests.request(socket, dir, path + "/payment/\(paymentId)")
        #expect((Self.json(one).first?.1["amount"] as? [String: Any])?["value"] as? String == "-40.10")
        let events = try ProxyTests.request(socket, dir, "/v1/user/\(userId)/event")
        let objects = Self.json(events).compactMap { ($0.1["object"] as? [String: Any])?.keys.first }
        #expect(objects == ["Payment", "Payment", "Payment", "Payment", "RequestInquiry"], "\(objects)")
        let poor = try ProxyTests.request(socket, dir, path + "/payment", method: "POST", body: """
            {"amount":{"value":"99999.00","currency":"EUR"},"counterparty_alias":{"type":"IBAN","value":"NL91ABNA0417164300","name":"X"},"description":"too much"}
            """)
        #expect(poor.status == 400 && poor.error == nil, "bunq's refusal, passed on as bunq gave it: \(Self.text(poor))")
        #expect(try balance() == "1206.90")

        // A draft payment: nothing moves until the holder accepts it.
        let drafted = try ProxyTests.request(socket, dir, path + "/draft-payment", method: "POST", body: """
            {"entries":[{"amount":{"value":"6.90","currency":"EUR"},"counterparty_alias":{"type":"IBAN","value":"NL91ABNA0417164300","name":"Shop"},"description":"draft"}],"number_of_required_accepts":1}
            """)
        #expect(drafted.status == 200, "\(Self.text(drafted))")
        let draftId = try #require(Self.json(drafted).first { $0.0 == "Id" }?.1["id"] as? Int)
        #expect(try balance() == "1206.90")
        _ = try running.sandbox.admin("POST", "draft-payments/\(draftId)", #"{"status":"ACCEPTED"}"#)
        let draft = try ProxyTests.request(socket, dir, path + "/draft-payment/\(draftId)")
        #expect(Self.json(draft).first?.1["status"] as? String == "ACCEPTED")
        #expect(try balance() == "1200.00")

        // The provider initiates a payment from this user's IBAN; the user approves it.
        let providerId = try #require(ProxyTests.userId(try ProxyTests.request(socket, dir, "/v1/user", context: "provider")))
        let initiations = "/v1/user/\(providerId)/payment-service-provider-draft-payment"
        let initiated = try ProxyTests.request(socket, dir, initiations, method: "POST", context: "provider", body: """
            {"sender_iban":"\(iban)","counterparty_iban":"NL91ABNA0417164300","counterparty_name":"Webshop","description":"order 9","amount":{"value":"100.00","currency":"EUR"}}
            """)
        #expect(initiated.status == 200, "\(Self.text(initiated))")
        let initiationId = try #require(Self.json(initiated).first { $0.0 == "Id" }?.1["id"] as? Int)
        _ = try running.sandbox.admin("POST", "draft-payments/\(initiationId)", #"{"status":"ACCEPTED"}"#)
        let status = try ProxyTests.request(socket, dir, initiations + "/\(initiationId)", context: "provider")
        #expect(Self.json(status).first?.1["status"] as? String == "ACCEPTED", "\(Self.text(status))")
        #expect(try balance() == "1100.00")

        // A callback: the application subscribes through the proxy; bunq's signed NotificationUrl arrives.
        let port = try freeLoopbackPort()
        let receiver = try ChildProcess("/usr/bin/python3", [Self.receiver, "\(port)", dir.path("callbacks")],
                                        log: dir.path("receiver.log"))
        defer { _ = receiver.stop() }
        #expect(await receiver.waitFor(.seconds(10)) { $0.contains("listening") }, "\(receiver.log)")
        let subscribed = try ProxyTests.request(socket, dir, "/v1/user/\(userId)/notification-filter-url", method: "POST", body: """
            {"notification_filters":[{"category":"PAYMENT","notification_target":"http://127.0.0.1:\(port)/bunq"}]}
            """)
        #expect(subscribed.status == 200, "\(Self.text(subscribed))")
        _ = try ProxyTests.request(socket, dir, path + "/payment", method: "POST", body: """
            {"amount":{"value":"0.01","currency":"EUR"},"counterparty_alias":{"type":"IBAN","value":"NL91ABNA0417164300","name":"X"},"description":"called back"}
            """)
        #expect(await receiver.waitFor(.seconds(10)) { $0.contains("received 1 PAYMENT PAYMENT_CREATED") }, "\(receiver.log)")
        let callback = try String(contentsOfFile: dir.path("callbacks/1.body"), encoding: .utf8)
        #expect(callback.contains(#""event_type":"PAYMENT_CREATED""#) && callback.contains("called back"), "\(callback)")
        let session = result(try RawSocketClient(running.socket)
            .call(#"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#))
        _ = try dir.write("server.pem", try #require(session?["server_public_key"] as? String))
        let signature = try #require(Data(base64Encoded: try String(contentsOfFile: dir.path("callbacks/1.sig"), encoding: .utf8)))
        try signature.write(to: dir.url.appendingPathComponent("callback.sig"))
        let verify = try Command.run(["openssl", "dgst", "-sha256", "-verify", dir.path("server.pem"), "-signature",
                                      dir.path("callback.sig"), dir.path("callbacks/1.body")])
        #expect(verify.status == 0, "the callback's signature verifies with the installation's server key: \(verify.stderrText)")
        #expect(try running.sandbox.stat("rejected_signatures") == 0)
    }
}
