import DynamicJSON
import Foundation

/// A `DraftPayment`: payments an application prepares and the account holder approves in the app. `PENDING` until
/// the holder answers (`POST /_sandbox/draft-payments/{id}` plays the holder); accepting it makes the payment (one
/// entry) or a payment batch (several).
struct DraftPaymentRecord: Sendable {
    enum Status: String, Sendable {
        case pending = "PENDING"
        case accepted = "ACCEPTED"
        case rejected = "REJECTED"
        case cancelled = "CANCELLED"
    }

    struct Entry: Sendable {
        let id: Int
        let transfer: SandboxStore.Transfer
    }

    let id: Int
    let accountId: Int
    let created: Date
    var updated: Date
    let entries: [Entry]
    let requiredAccepts: Int
    var status: Status
    /// What accepting it made: a payment (one entry) or a batch.
    enum Outcome: Sendable {
        case payment(Int)
        case paymentBatch(Int)
    }

    var result: Outcome?
}

/// A provider's `PaymentServiceProviderDraftPayment` (PSD2 payment initiation): a payment from a bunq user's IBAN
/// that the user approves in the app; the provider sees only its status.
struct ProviderDraftPaymentRecord: Sendable {
    let id: Int
    let providerUserId: Int
    let created: Date
    var updated: Date
    let senderAccountId: Int
    let senderIBAN: String
    let receiverIBAN: String
    let transfer: SandboxStore.Transfer
    var status: DraftPaymentRecord.Status
    var paymentId: Int?

    var json: BunqJSON {
        .object([
            ("id", .int(id)),
            ("created", .string(BunqTime.format(created))),
            ("updated", .string(BunqTime.format(updated))),
            ("sender_iban", .string(senderIBAN)),
            ("receiver_iban", .string(receiverIBAN)),
            ("amount", transfer.amount.json),
            ("status", .string(status.rawValue)),
        ])
    }
}

extension SandboxStore {
    // MARK: Draft payments

    /// `POST …/draft-payment` `{"entries": [{amount, counterparty_alias, description}], "number_of_required_accepts": 1}`.
    mutating func createDraftPayment(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let (_, account) = try requireOwnAccount(call)
        guard let list = call.body["entries"]?.array, !list.isEmpty else {
            throw .badRequest("Field entries is required: a list of payments.")
        }
        guard list.count <= 200 else { throw .badRequest("A draft payment holds at most 200 entries.") }
        guard let accepts = call.body["number_of_required_accepts"]?.integer, accepts >= 1 else {
            throw .badRequest("Field number_of_required_accepts is required: an integer of at least 1.")
        }
        var entries: [DraftPaymentRecord.Entry] = []
        for (index, item) in list.enumerated() {
            guard let object = item.object else { throw .badRequest("Field entries[\(index)] must be a payment object.") }
            let transfer = try transfer(object, from: account, field: "entries[\(index)]")
            entries.append(.init(id: nextId("draft-payment-entry", base: 60_000), transfer: transfer))
        }
        let draft = DraftPaymentRecord(id: nextId("draft-payment", base: 50_000), accountId: account.id, created: call.now,
                                       updated: call.now, entries: entries, requiredAccepts: accepts, status: .pending)
        draftPayments[draft.id] = draft
        addEvent(.draftPayment(draft.id), account: account, now: call.now)
        notify("DRAFT_PAYMENT", "DRAFT_PAYMENT_CREATED", account: account, object: ("DraftPayment", draftPaymentJSON(draft)))
        return .response([("Id", .object([("id", .int(draft.id))]))])
    }

    func draftPaymentJSON(_ draft: DraftPaymentRecord) -> BunqJSON {
        let account = accounts[draft.accountId]
        let owner = account.flatMap { users[$0.ownerId] }
        let alias = account.map { label($0) }
        let object: BunqJSON = switch draft.result {
        case .payment(let id)?: payments[id].map { .object([("Payment", $0.json)]) } ?? .null
        case .paymentBatch(let id)?: paymentBatches[id].map { .object([("PaymentBatch", paymentBatchJSON($0))]) } ?? .null
        case nil: .null
        }
        return .object([
            ("id", .int(draft.id)),
            ("created", .string(BunqTime.format(draft.created))),
            ("updated", .string(BunqTime.format(draft.updated))),
            ("monetary_account_id", .int(draft.accountId)),
            ("user_alias_created", .object([
                ("uuid", owner.map { .string($0.publicUUID) } ?? .null),
                ("display_name", .string(owner?.displayName ?? "")),
                ("country", "NL"),
                ("avatar", .null),
                ("public_nick_name", .string(owner?.displayName ?? "")),
            ])),
            ("responses", .array(draft.status == .pending || draft.status == .cancelled ? [] : [.object([
                ("status", .string(draft.status.rawValue)),
                ("user_alias_created", .object([("uuid", owner.map { .string($0.publicUUID) } ?? .null),
                                                ("display_name", .string(owner?.displayName ?? ""))])),
            ])])),
            ("status", .string(draft.status.rawValue)),
            ("type", "MANUAL"),
            ("number_of_required_accepts", .int(draft.requiredAccepts)),
            ("entries", .array(draft.entries.map { entry in
                .object([
                    ("id", .int(entry.id)),
                    ("amount", entry.transfer.amount.json),
                    ("alias", alias?.json ?? .null),
                    ("counterparty_alias", label(entry.transfer.to).json),
                    ("description", .string(entry.transfer.description)),
                    ("merchant_reference", entry.transfer.merchantReference.map(BunqJSON.string) ?? .null),
                    ("type", "REGULAR"),
                    ("attachment", []),
                ])
            })),
            ("object", object),
            ("request_reference_split_the_bill", []),
            ("schedule", .null),
        ])
    }

    func listDraftPayments(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let (session, account) = try requireOwnAccount(call)
        let (page, pagination) = try ListPage.parse(call.query).apply(
            draftPayments.values.filter { $0.accountId == account.id }, id: \.id,
            path: "/v1/user/\(session.userId)/monetary-account/\(account.id)/draft-payment")
        return .response(page.map { ("DraftPayment", draftPaymentJSON($0)) }, pagination: pagination)
    }

    func draftPayment(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let (_, account) = try requireOwnAccount(call)
        guard call.pathIds.count == 3, let draft = draftPayments[call.pathIds[2]], draft.accountId == account.id else {
            throw .notFound("DraftPayment")
        }
        return .response([("DraftPayment", draftPaymentJSON(draft))])
    }

    /// `PUT …/draft-payment/{id}` `{"status": "CANCELLED"}`: the application withdraws a draft not yet answered.
    mutating func updateDraftPayment(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let (_, account) = try requireOwnAccount(call)
        guard call.pathIds.count == 3, var draft = draftPayments[call.pathIds[2]], draft.accountId == account.id else {
            throw .notFound("DraftPayment")
        }
        guard call.body["status"]?.string == DraftPaymentRecord.Status.cancelled.rawValue else {
            throw .badRequest("Field status can only be set to CANCELLED.")
        }
        guard draft.status == .pending else { throw .badRequest("The draft payment is \(draft.status.rawValue), not PENDING.") }
        draft.status = .cancelled
        draft.updated = call.now
        draftPayments[draft.id] = draft
        return .response([("Id", .object([("id", .int(draft.id))]))])
    }

    // MARK: PSD2 payment initiation

    /// `POST /v1/user/{userID}/payment-service-provider-draft-payment`: a provider asks a bunq user (named by the
    /// sender's IBAN) to approve a payment.
    mutating func createProviderDraftPayment(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let session = try requireOwnUser(call)
        guard users[session.userId]?.kind == .serviceProvider else { throw .notAllowed }
        func required(_ name: String) throws(SandboxError) -> String {
            guard let value = call.body[name]?.string, !value.trimmingCharacters(in: .whitespaces).isEmpty else {
                throw .badRequest("Field \(name) is required.")
            }
            return value
        }
        let senderText = try required("sender_iban")
        guard let senderIBAN = IBAN.normalized(senderText) else { throw .badRequest("The IBAN \(senderText) in sender_iban is not valid.") }
        guard let sender = accounts.values.first(where: { $0.iban == senderIBAN }) else {
            throw .badRequest("The IBAN \(senderText) in sender_iban is not an account at bunq.")
        }
        let counterpartyText = try required("counterparty_iban")
        let to = try counterparty(.object(["type": "IBAN", "value": .string(counterpartyText),
                                           "name": .string(try required("counterparty_name"))]), field: "counterparty_iban")
        if case .account(let target) = to, target.id == sender.id {
            throw .badRequest("A payment cannot go to the monetary account it comes from.")
        }
        let transfer = Transfer(amount: try Money.parse(call.body["amount"], field: "amount"), to: to,
                                description: try Self.description(call.body["description"], field: "description"),
                                merchantReference: nil)
        let draft = ProviderDraftPaymentRecord(
            id: nextId("provider-draft-payment", base: 70_000), providerUserId: session.userId, created: call.now,
            updated: call.now, senderAccountId: sender.id, senderIBAN: senderIBAN, receiverIBAN: label(to).iban,
            transfer: transfer, status: .pending)
        providerDraftPayments[draft.id] = draft
        return .response([("Id", .object([("id", .int(draft.id))]))])
    }

    func listProviderDraftPayments(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let session = try requireOwnUser(call)
        let (page, pagination) = try ListPage.parse(call.query).apply(
            providerDraftPayments.values.filter { $0.providerUserId == session.userId }, id: \.id,
            path: "/v1/user/\(session.userId)/payment-service-provider-draft-payment")
        return .response(page.map { ("PaymentServiceProviderDraftPayment", $0.json) }, pagination: pagination)
    }

    func providerDraftPayment(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let session = try requireOwnUser(call)
        guard call.pathIds.count == 2, let draft = providerDraftPayments[call.pathIds[1]],
              draft.providerUserId == session.userId else { throw .notFound("PaymentServiceProviderDraftPayment") }
        return .response([("PaymentServiceProviderDraftPayment", draft.json)])
    }

    /// `PUT …/payment-service-provider-draft-payment/{id}` `{"status": "CANCELLED"|"REJECTED"}`: the provider
    /// withdraws it.
    mutating func updateProviderDraftPayment(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let session = try requireOwnUser(call)
        guard call.pathIds.count == 2, var draft = providerDraftPayments[call.pathIds[1]],
              draft.providerUserId == session.userId else { throw .notFound("PaymentServiceProviderDraftPayment") }
        guard let text = call.body["status"]?.string, let status = DraftPaymentRecord.Status(rawValue: text),
              status == .cancelled || status == .rejected else {
            throw .badRequest("Field status can only be set to REJECTED or CANCELLED.")
        }
        guard draft.status == .pending else { throw .badRequest("The draft payment is \(draft.status.rawValue), not PENDING.") }
        draft.status = status
        draft.updated = call.now
        providerDraftPayments[draft.id] = draft
        return .response([("Id", .object([("id", .int(draft.id))]))])
    }

    // MARK: The account holder's answer (admin)

    /// The account holder answers a pending draft payment or provider draft payment (`id` from either):
    /// ACCEPTED makes the payments, if the balance allows all of them; REJECTED ends it. Returns the new status.
    mutating func answerDraft(_ id: Int, accept: Bool, now: Date) throws(SandboxError) -> String {
        if var draft = draftPayments[id] {
            guard draft.status == .pending else { throw .badRequest("The draft payment is \(draft.status.rawValue), not PENDING.") }
            guard let account = accounts[draft.accountId] else { throw .notFound("MonetaryAccount") }
            if accept {
                let transfers = draft.entries.map(\.transfer)
                try requireBalance(account, for: transfers)
                if transfers.count == 1 {
                    draft.result = .payment(execute(transfers[0], from: account, now: now))
                } else {
                    let batchId = nextId("payment-batch", base: 7_000)
                    let paymentIds = transfers.map { execute($0, from: account, batchId: batchId, now: now) }
                    paymentBatches[batchId] = PaymentBatchRecord(id: batchId, accountId: account.id, created: now,
                                                                 paymentIds: paymentIds)
                    draft.result = .paymentBatch(batchId)
                }
            }
            draft.status = accept ? .accepted : .rejected
            draft.updated = now
            draftPayments[id] = draft
            notify("DRAFT_PAYMENT", "DRAFT_PAYMENT_\(draft.status.rawValue)", account: account,
                   object: ("DraftPayment", draftPaymentJSON(draft)))
            return draft.status.rawValue
        }
        if var draft = providerDraftPayments[id] {
            guard draft.status == .pending else { throw .badRequest("The draft payment is \(draft.status.rawValue), not PENDING.") }
            guard let account = accounts[draft.senderAccountId] else { throw .notFound("MonetaryAccount") }
            if accept {
                try requireBalance(account, for: [draft.transfer])
                draft.paymentId = execute(draft.transfer, from: account, now: now)
            }
            draft.status = accept ? .accepted : .rejected
            draft.updated = now
            providerDraftPayments[id] = draft
            return draft.status.rawValue
        }
        throw .notFound("Draft payment")
    }
}
