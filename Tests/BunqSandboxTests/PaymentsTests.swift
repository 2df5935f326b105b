import BunqSandbox
import Foundation
import TestThreads
import Testing

/// Money in the emulator: payments between its users and to banks elsewhere, batches, bunq's paging, the
/// sandbox benefactor `sugardaddy@bunq.com`, and the events all of it leaves. Against the emulator directly, with
/// its rate limits off as BunqSandbox.test explains; `postsThatMoveMoneyKeepBunqsWindow` has them on.
@Suite(.ownThread) struct PaymentsTests {
    /// A sandbox user with a live session on `client`'s installation.
    struct Holder {
        let token: String
        let userId: Int
        let accountId: Int
        let iban: String
        let email: String
        let phone: String

        var account: String { "/v1/user/\(userId)/monetary-account/\(accountId)" }
    }

    static func holder(_ client: inout SandboxTestClient) async throws -> Holder {
        let (token, _, user) = try await client.openSession(secret: try await client.sandboxUser())
        let userId = try #require(user["id"] as? Int)
        let accounts = try await client.call("GET", "/v1/user/\(userId)/monetary-account-bank", token: token)
        let account = try #require(accounts.item("MonetaryAccountBank"))
        let aliases = (user["alias"] as? [[String: Any]]) ?? []
        func alias(_ type: String) -> String? { aliases.first { $0["type"] as? String == type }?["value"] as? String }
        let iban = try #require(((account["alias"] as? [[String: Any]])?.first)?["value"] as? String)
        #expect(alias("IBAN") == iban, "the user's IBAN alias is its first account's")
        return Holder(token: token, userId: userId, accountId: try #require(account["id"] as? Int), iban: iban,
                      email: try #require(alias("EMAIL")), phone: try #require(alias("PHONE_NUMBER")))
    }

    static func balance(_ client: SandboxTestClient, _ holder: Holder) async throws -> String? {
        let reply = try await client.call("GET", holder.account, token: holder.token)
        return (reply.item("MonetaryAccountBank")?["balance"] as? [String: Any])?["value"] as? String
    }

    static func balances(_ client: SandboxTestClient, _ holders: [Holder]) async throws -> [String?] {
        var values: [String?] = []
        for holder in holders { values.append(try await balance(client, holder)) }
        return values
    }

    static func pay(_ client: SandboxTestClient, _ from: Holder, _ value: String, to alias: [String: Any],
                    description: String = "test") async throws -> SandboxTestClient.Reply {
        try await client.call("POST", from.account + "/payment", [
            "amount": ["value": value, "currency": "EUR"], "counterparty_alias": alias, "description": description,
        ], token: from.token)
    }

    @Test func moneyMovesBetweenUsersAndOnlyOutToOtherBanks() async throws {
        try await BunqSandbox.test { client in
            let alice = try await Self.holder(&client)
            let bob = try await Self.holder(&client)
            #expect(try await Self.balance(client, alice) == "1000.00", "an account opens with 1,000.00 EUR")

            let byIBAN = try await Self.pay(client, alice, "12.50", to: ["type": "IBAN", "value": bob.iban, "name": "Bob"],
                                            description: "lunch")
            #expect(byIBAN.status == 200, "\(byIBAN.error ?? "")")
            let sentId = try #require(byIBAN.item("Id")?["id"] as? Int)
            #expect(try await Self.balance(client, alice) == "987.50")
            #expect(try await Self.balance(client, bob) == "1012.50")
            for alias in [["type": "EMAIL", "value": alice.email], ["type": "PHONE_NUMBER", "value": alice.phone]] {
                #expect(try await Self.pay(client, bob, "1.25", to: alias).status == 200, "by \(alias["type"]!)")
            }
            #expect(try await Self.balance(client, alice) == "990.00")

            let sent = try #require(try await client.call("GET", alice.account + "/payment/\(sentId)", token: alice.token)
                .item("Payment"))
            #expect((sent["amount"] as? [String: Any])?["value"] as? String == "-12.50")
            #expect(sent["type"] as? String == "BUNQ" && sent["sub_type"] as? String == "PAYMENT")
            #expect(sent["description"] as? String == "lunch" && sent["monetary_account_id"] as? Int == alice.accountId)
            #expect((sent["counterparty_alias"] as? [String: Any])?["iban"] as? String == bob.iban)
            #expect((sent["balance_after_mutation"] as? [String: Any])?["value"] as? String == "987.50")
            let received = try await client.call("GET", bob.account + "/payment", token: bob.token)
            let incoming = received.items.filter { $0.0 == "Payment" }.map(\.1)
            #expect(incoming.count == 3, "bob's account shows the payment in and his two out")
            let lunch = try #require(incoming.last, "newest first: the payment in is the oldest")
            #expect((lunch["amount"] as? [String: Any])?["value"] as? String == "12.50")
            #expect((lunch["counterparty_alias"] as? [String: Any])?["iban"] as? String == alice.iban)
            #expect(lunch["id"] as? Int != sentId, "each side of a payment has its own id")

            // Elsewhere: a valid IBAN with a name; only the sender's balance moves.
            let out = try await Self.pay(client, alice, "100", to: ["type": "IBAN", "value": "NL91 ABNA 0417 1643 00",
                                                                     "name": "Elsewhere B.V."])
            #expect(out.status == 200, "\(out.error ?? "")")
            #expect(try await Self.balance(client, alice) == "890.00")
            let outId = try #require(out.item("Id")?["id"] as? Int)
            let external = try await client.call("GET", alice.account + "/payment/\(outId)", token: alice.token).item("Payment")
            #expect(external?["type"] as? String == "EBA_SCT")
            #expect((external?["counterparty_alias"] as? [String: Any])?["iban"] as? String == "NL91ABNA0417164300")

            // Refusals: bunq's error shape, and nothing moves.
            let refusals: [([String: Any], String, String)] = [
                (["type": "IBAN", "value": bob.iban], "5000.00", "insufficient"),
                (["type": "IBAN", "value": "NL92ABNA0417164300", "name": "X"], "1.00", "not valid"),
                (["type": "IBAN", "value": "NL91ABNA0417164300"], "1.00", "name is required"),
                (["type": "EMAIL", "value": "nobody@example.com"], "1.00", "No bunq user"),
                (["type": "IBAN", "value": alice.iban], "1.00", "cannot go to the monetary account it comes from"),
                (["type": "IBAN", "value": bob.iban], "1.005", "at most two decimals"),
                (["type": "IBAN", "value": bob.iban], "0.00", "bigger than 0"),
                (["type": "BUNQ_ME", "value": "x"], "1.00", "must be IBAN, EMAIL or PHONE_NUMBER"),
            ]
            for (alias, value, reason) in refusals {
                let refused = try await Self.pay(client, alice, value, to: alias)
                #expect(refused.status == 400 && refused.error?.contains(reason) == true,
                        "\(alias) \(value): \(refused.status) \(refused.error ?? "")")
            }
            let dollars = try await client.call("POST", alice.account + "/payment", [
                "amount": ["value": "1.00", "currency": "USD"], "counterparty_alias": ["type": "IBAN", "value": bob.iban],
                "description": "x"], token: alice.token)
            #expect(dollars.status == 400 && dollars.error?.contains("USD") == true)
            let unsigned = try await client.call("POST", alice.account + "/payment", [
                "amount": ["value": "1.00", "currency": "EUR"], "counterparty_alias": ["type": "IBAN", "value": bob.iban],
                "description": "x"], token: alice.token, signing: .none)
            #expect(unsigned.status == 466, "a payment must be signed")
            #expect(try await Self.balances(client, [alice, bob]) == ["890.00", "1010.00"])

            // Someone else's account and payments are not the caller's.
            #expect(try await client.call("GET", alice.account + "/payment", token: bob.token).status == 403)
            #expect(try await client.call("GET", "/v1/user/\(bob.userId)/monetary-account/\(alice.accountId)/payment/\(sentId)",
                                          token: bob.token).status == 404)
        }
    }

    @Test func paymentListsPageAsBunqDoes() async throws {
        try await BunqSandbox.test { client in
            let alice = try await Self.holder(&client)
            let bob = try await Self.holder(&client)
            var ids: [Int] = []
            for cents in 1...5 {
                let reply = try await Self.pay(client, alice, "0.0\(cents)", to: ["type": "IBAN", "value": bob.iban])
                ids.append(try #require(reply.item("Id")?["id"] as? Int))
            }
            let path = alice.account + "/payment"
            let first = try await client.call("GET", path + "?count=2", token: alice.token)
            #expect(first.items.compactMap { $0.1["id"] as? Int } == [ids[4], ids[3]], "newest first")
            let pagination = try #require(first.json["Pagination"] as? [String: Any])
            #expect(pagination["older_url"] as? String == "\(path)?count=2&older_id=\(ids[3])")
            #expect(pagination["newer_url"] is NSNull)
            #expect(pagination["future_url"] as? String == "\(path)?count=2&newer_id=\(ids[4])")
            let older = try await client.call("GET", try #require(pagination["older_url"] as? String), token: alice.token)
            #expect(older.items.compactMap { $0.1["id"] as? Int } == [ids[2], ids[1]])
            let newer = (older.json["Pagination"] as? [String: Any])?["newer_url"] as? String
            #expect(newer == "\(path)?count=2&newer_id=\(ids[2])")
            let future = try await client.call("GET", "\(path)?count=2&newer_id=\(ids[4])", token: alice.token)
            #expect(future.items.isEmpty && (future.json["Pagination"] as? [String: Any])?["future_url"] as? String
                == "\(path)?count=2&newer_id=\(ids[4])", "polling for newer payments goes on from the newest")
        }
    }

    @Test func aBatchPaysAllOrNothing() async throws {
        try await BunqSandbox.test { client in
            let alice = try await Self.holder(&client)
            let bob = try await Self.holder(&client)
            func entry(_ value: String, _ alias: [String: Any]) -> [String: Any] {
                ["amount": ["value": value, "currency": "EUR"], "counterparty_alias": alias, "description": "batch"]
            }
            let bobIBAN: [String: Any] = ["type": "IBAN", "value": bob.iban]
            let elsewhere: [String: Any] = ["type": "IBAN", "value": "NL91ABNA0417164300", "name": "Elsewhere"]
            let batch = try await client.call("POST", alice.account + "/payment-batch", [
                "payments": [entry("10.00", bobIBAN), entry("20.00", elsewhere), entry("0.50", ["type": "EMAIL", "value": bob.email])],
            ], token: alice.token)
            #expect(batch.status == 200, "\(batch.error ?? "")")
            let batchId = try #require(batch.item("Id")?["id"] as? Int)
            #expect(try await Self.balances(client, [alice, bob]) == ["969.50", "1010.50"])
            let read = try #require(try await client.call("GET", alice.account + "/payment-batch/\(batchId)", token: alice.token)
                .item("PaymentBatch"))
            let payments = try #require((read["payments"] as? [String: Any])?["Payment"] as? [[String: Any]])
            #expect(payments.map { ($0["amount"] as? [String: Any])?["value"] as? String } == ["-10.00", "-20.00", "-0.50"])
            #expect(payments.allSatisfy { $0["batch_id"] as? Int == batchId })

            // Over the balance together, though each alone would pass: refused whole, naming nothing paid.
            let tooMuch = try await client.call("POST", alice.account + "/payment-batch", [
                "payments": [entry("500.00", bobIBAN), entry("500.00", bobIBAN)],
            ], token: alice.token)
            #expect(tooMuch.status == 400 && tooMuch.error?.contains("insufficient") == true)
            let badEntry = try await client.call("POST", alice.account + "/payment-batch", [
                "payments": [entry("1.00", bobIBAN), entry("1.00", ["type": "IBAN", "value": "NL00XXXX0000000000"])],
            ], token: alice.token)
            #expect(badEntry.status == 400 && badEntry.error?.contains("payments[1].counterparty_alias") == true)
            #expect(try await Self.balances(client, [alice, bob]) == ["969.50", "1010.50"])
        }
    }

    @Test func sugarDaddyPaysUpTo500AndEveryoneElseLetsARequestWait() async throws {
        try await BunqSandbox.test { client in
            let alice = try await Self.holder(&client)
            let bob = try await Self.holder(&client)
            func request(_ value: String, from alias: [String: Any]) async throws -> [String: Any] {
                let reply = try await client.call("POST", alice.account + "/request-inquiry", [
                    "amount_inquired": ["value": value, "currency": "EUR"], "counterparty_alias": alias,
                    "description": "please", "allow_bunqme": false,
                ], token: alice.token)
                #expect(reply.status == 200, "\(reply.error ?? "")")
                let id = try #require(reply.item("Id")?["id"] as? Int)
                return try #require(try await client.call("GET", alice.account + "/request-inquiry/\(id)", token: alice.token)
                    .item("RequestInquiry"))
            }
            let sugarDaddy: [String: Any] = ["type": "EMAIL", "value": "sugardaddy@bunq.com", "name": "Sugar Daddy"]
            let paid = try await request("500.00", from: sugarDaddy)
            #expect(paid["status"] as? String == "ACCEPTED")
            #expect((paid["amount_responded"] as? [String: Any])?["value"] as? String == "500.00")
            #expect(try await Self.balance(client, alice) == "1500.00")
            #expect(try await request("500.01", from: sugarDaddy)["status"] as? String == "REJECTED", "more than 500.00 is refused")
            #expect(try await request("5.00", from: ["type": "IBAN", "value": bob.iban])["status"] as? String == "PENDING")
            #expect(try await Self.balance(client, alice) == "1500.00")
            let missing = try await client.call("POST", alice.account + "/request-inquiry", [
                "amount_inquired": ["value": "1.00", "currency": "EUR"], "counterparty_alias": sugarDaddy, "description": "x",
            ], token: alice.token)
            #expect(missing.status == 400 && missing.error?.contains("allow_bunqme") == true, "bunq requires allow_bunqme")

            // The events: newest first, each with its object inside as it is now.
            _ = try await Self.pay(client, bob, "2.00", to: ["type": "EMAIL", "value": alice.email])
            let events = try await client.call("GET", "/v1/user/\(alice.userId)/event", token: alice.token)
            let listed = events.items.filter { $0.0 == "Event" }.map(\.1)
            let kinds = listed.map { (($0["object"] as? [String: Any])?.keys.first, $0["status"] as? String) }
            #expect(kinds.map(\.0) == ["Payment", "RequestInquiry", "RequestInquiry", "Payment", "RequestInquiry"],
                    "bob's payment in, two requests, sugar daddy's payment in after the request it answers: \(kinds)")
            #expect(kinds.map(\.1) == ["FINALIZED", "AWAITING_REPLY", "FINALIZED", "FINALIZED", "FINALIZED"])
            #expect(listed.allSatisfy { $0["monetary_account_id"] as? String == "\(alice.accountId)" && $0["action"] as? String == "CREATE" })
            let newest = try #require(listed.first?["id"] as? Int)
            let one = try await client.call("GET", "/v1/user/\(alice.userId)/event/\(newest)", token: alice.token)
            #expect(((one.item("Event")?["object"] as? [String: Any])?["Payment"] as? [String: Any])?["description"] as? String == "test")
            #expect(try await client.call("GET", "/v1/user/\(bob.userId)/event/\(newest)", token: bob.token).status == 404,
                    "another user's event is not found")
        }
    }

    @Test func postsThatMoveMoneyKeepBunqsWindow() async throws {
        // bunq's limits on (POST: 5 per 3 s per endpoint and IP), the window scaled to 20 s so a loaded machine
        // cannot slip a sixth call past its end. One user: a second session would wait out session-server's window.
        var configuration = SandboxConfiguration()
        configuration.rateLimitScale = 20.0 / 3
        try await BunqSandbox.test(configuration) { client in
            let alice = try await Self.holder(&client)
            var statuses: [Int] = []
            for _ in 0..<6 {
                let elsewhere: [String: Any] = ["type": "IBAN", "value": "NL91ABNA0417164300", "name": "Elsewhere"]
                statuses.append(try await Self.pay(client, alice, "1.00", to: elsewhere).status)
            }
            #expect(statuses == [200, 200, 200, 200, 200, 429], "\(statuses)")
            #expect(try await Self.balance(client, alice) == "995.00", "the refused payment moved nothing")
        }
    }
}
