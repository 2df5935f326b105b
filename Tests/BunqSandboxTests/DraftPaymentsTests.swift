import BunqSandbox
import Foundation
import TestThreads
import Testing

/// Payments the account holder approves: an application's draft payments, and a PSD2 provider's payment
/// initiation; `POST /_sandbox/draft-payments/{id}` answers as the holder would in the bunq app. Rate limits off
/// (BunqSandbox.test): these check the emulator's rules for drafts, many calls a second from one IP; bunq's
/// windows on money calls are PaymentsTests.postsThatMoveMoneyKeepBunqsWindow's and ProxyMoneyTests'.
@Suite(.ownThread) struct DraftPaymentsTests {
    typealias Holder = PaymentsTests.Holder

    static func draft(_ client: SandboxTestClient, _ from: Holder, _ entries: [(String, [String: Any])],
                      accepts: Int? = 1) async throws -> SandboxTestClient.Reply {
        var body: [String: Any] = ["entries": entries.map { value, alias in
            ["amount": ["value": value, "currency": "EUR"], "counterparty_alias": alias, "description": "draft \(value)"]
        }]
        if let accepts { body["number_of_required_accepts"] = accepts }
        return try await client.call("POST", from.account + "/draft-payment", body, token: from.token)
    }

    static func read(_ client: SandboxTestClient, _ holder: Holder, _ id: Int) async throws -> [String: Any] {
        try #require(try await client.call("GET", holder.account + "/draft-payment/\(id)", token: holder.token).item("DraftPayment"))
    }

    static func answer(_ client: SandboxTestClient, _ id: Int, _ status: String) async throws -> SandboxTestClient.Reply {
        try await client.call("POST", "/_sandbox/draft-payments/\(id)", ["status": status], verify: false)
    }

    @Test func aDraftWaitsForTheHolderAndAcceptingItPays() async throws {
        try await BunqSandbox.test { client in
            let alice = try await PaymentsTests.holder(&client)
            let bob = try await PaymentsTests.holder(&client)
            let toBob: [String: Any] = ["type": "IBAN", "value": bob.iban]
            let elsewhere: [String: Any] = ["type": "IBAN", "value": "NL91ABNA0417164300", "name": "Elsewhere"]

            let single = try await Self.draft(client, alice, [("25.00", toBob)])
            #expect(single.status == 200, "\(single.error ?? "")")
            let singleId = try #require(single.item("Id")?["id"] as? Int)
            var read = try await Self.read(client, alice, singleId)
            #expect(read["status"] as? String == "PENDING" && read["object"] is NSNull)
            let entries = try #require(read["entries"] as? [[String: Any]])
            #expect(entries.count == 1 && (entries[0]["amount"] as? [String: Any])?["value"] as? String == "25.00")
            #expect((entries[0]["counterparty_alias"] as? [String: Any])?["iban"] as? String == bob.iban)
            #expect(try await PaymentsTests.balance(client, alice) == "1000.00", "nothing moves before the holder answers")
            let waiting = try await client.call("GET", "/v1/user/\(alice.userId)/event", token: alice.token)
            let newest = try #require(waiting.items.first?.1)
            #expect((newest["object"] as? [String: Any])?.keys.first == "DraftPayment")
            #expect(newest["status"] as? String == "AWAITING_REPLY")

            #expect(try await Self.answer(client, singleId, "ACCEPTED").status == 200)
            read = try await Self.read(client, alice, singleId)
            #expect(read["status"] as? String == "ACCEPTED")
            #expect(((read["object"] as? [String: Any])?["Payment"] as? [String: Any])?["description"] as? String == "draft 25.00")
            #expect(try await PaymentsTests.balances(client, [alice, bob]) == ["975.00", "1025.00"])
            let again = try await Self.answer(client, singleId, "REJECTED")
            #expect(again.status == 400 && again.error?.contains("not PENDING") == true, "a draft is answered once")

            // Several entries become one batch.
            let several = try #require(try await Self.draft(client, alice, [("1.00", toBob), ("2.00", elsewhere)]).item("Id")?["id"] as? Int)
            #expect(try await Self.answer(client, several, "ACCEPTED").status == 200)
            let batch = try #require((try await Self.read(client, alice, several)["object"] as? [String: Any])?["PaymentBatch"] as? [String: Any])
            #expect(((batch["payments"] as? [String: Any])?["Payment"] as? [[String: Any]])?.count == 2)
            #expect(try await PaymentsTests.balance(client, alice) == "972.00")

            // Rejected, cancelled, or more than the balance: nothing moves.
            let rejected = try #require(try await Self.draft(client, alice, [("3.00", toBob)]).item("Id")?["id"] as? Int)
            #expect(try await Self.answer(client, rejected, "REJECTED").status == 200)
            #expect(try await Self.read(client, alice, rejected)["status"] as? String == "REJECTED")
            let cancelled = try #require(try await Self.draft(client, alice, [("3.00", toBob)]).item("Id")?["id"] as? Int)
            let cancel = try await client.call("PUT", alice.account + "/draft-payment/\(cancelled)", ["status": "CANCELLED"],
                                               token: alice.token)
            #expect(cancel.status == 200, "\(cancel.error ?? "")")
            #expect(try await Self.answer(client, cancelled, "ACCEPTED").status == 400)
            let tooMuch = try #require(try await Self.draft(client, alice, [("5000.00", toBob)]).item("Id")?["id"] as? Int)
            let refused = try await Self.answer(client, tooMuch, "ACCEPTED")
            #expect(refused.status == 400 && refused.error?.contains("insufficient") == true)
            #expect(try await Self.read(client, alice, tooMuch)["status"] as? String == "PENDING", "still waiting")
            #expect(try await PaymentsTests.balances(client, [alice, bob]) == ["972.00", "1026.00"])

            let noAccepts = try await Self.draft(client, alice, [("1.00", toBob)], accepts: nil)
            #expect(noAccepts.status == 400 && noAccepts.error?.contains("number_of_required_accepts") == true)
            let badEntry = try await Self.draft(client, alice, [("1.00", toBob), ("1.00", ["type": "IBAN", "value": "NL91ABNA0417164300"])])
            #expect(badEntry.status == 400 && badEntry.error?.contains("entries[1].counterparty_alias.name") == true)
            let listed = try await client.call("GET", alice.account + "/draft-payment", token: alice.token)
            #expect(listed.items.map(\.1).compactMap { $0["status"] as? String }
                == ["PENDING", "CANCELLED", "REJECTED", "ACCEPTED", "ACCEPTED"])
            #expect(try await Self.answer(client, 1, "ACCEPTED").status == 404)
        }
    }

    @Test func aProviderInitiatesAPaymentTheUserApproves() async throws {
        let eidas = try PseudoEIDAS.make()
        try await BunqSandbox.test { client in
            let alice = try await PaymentsTests.holder(&client)
            let registered = try await client.registerPSD2(eidas)
            let tokenValue = try #require(registered.item("CredentialPasswordIp")?["token_value"] as? String)
            let (providerToken, _, provider) = try await client.openSession(secret: tokenValue)
            let providerId = try #require(provider["id"] as? Int)
            let path = "/v1/user/\(providerId)/payment-service-provider-draft-payment"
            func initiate(_ value: String, sender: String? = nil, token: String? = nil) async throws -> SandboxTestClient.Reply {
                try await client.call("POST", token == nil ? path : "/v1/user/\(alice.userId)/payment-service-provider-draft-payment", [
                    "sender_iban": sender ?? alice.iban, "counterparty_iban": "NL91ABNA0417164300", "counterparty_name": "Webshop B.V.",
                    "description": "order 17", "amount": ["value": value, "currency": "EUR"],
                ], token: token ?? providerToken)
            }
            let created = try await initiate("42.00")
            #expect(created.status == 200, "\(created.error ?? "")")
            let id = try #require(created.item("Id")?["id"] as? Int)
            let read = try #require(try await client.call("GET", path + "/\(id)", token: providerToken)
                .item("PaymentServiceProviderDraftPayment"))
            #expect(read["status"] as? String == "PENDING" && read["sender_iban"] as? String == alice.iban)
            #expect(read["receiver_iban"] as? String == "NL91ABNA0417164300")
            #expect((read["amount"] as? [String: Any])?["value"] as? String == "42.00")

            #expect(try await Self.answer(client, id, "ACCEPTED").status == 200)
            #expect(try await client.call("GET", path + "/\(id)", token: providerToken)
                .item("PaymentServiceProviderDraftPayment")?["status"] as? String == "ACCEPTED")
            #expect(try await PaymentsTests.balance(client, alice) == "958.00", "the user's account paid")
            let payments = try await client.call("GET", alice.account + "/payment", token: alice.token)
            #expect(payments.item("Payment")?["description"] as? String == "order 17")

            let rejected = try #require(try await initiate("1.00").item("Id")?["id"] as? Int)
            #expect(try await Self.answer(client, rejected, "REJECTED").status == 200)
            let withdrawn = try #require(try await initiate("1.00").item("Id")?["id"] as? Int)
            #expect(try await client.call("PUT", path + "/\(withdrawn)", ["status": "CANCELLED"], token: providerToken).status == 200)
            let statuses = try await client.call("GET", path, token: providerToken).items.compactMap { $0.1["status"] as? String }
            #expect(statuses == ["CANCELLED", "REJECTED", "ACCEPTED"])
            #expect(try await PaymentsTests.balance(client, alice) == "958.00")

            #expect(try await initiate("1.00", sender: "NL91ABNA0417164300").error?.contains("not an account at bunq") == true)
            #expect(try await initiate("1.00", token: alice.token).status == 403, "only a provider initiates payments")
        }
    }
}
