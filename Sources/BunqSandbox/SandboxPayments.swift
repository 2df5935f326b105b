import DynamicJSON
import Foundation

/// Money moving: payments, payment batches, request-inquiries (`sugardaddy@bunq.com` pays at once) and the events
/// they leave, as bunq's swagger names them. Balances are kept in cents; a payment either happens whole or not
/// at all.
extension SandboxStore {
    /// Where a counterparty alias leads: one of the emulator's accounts, or an IBAN elsewhere.
    enum Counterparty: Sendable {
        case account(MonetaryAccount)
        case external(iban: String, name: String)
    }

    static let sugarDaddyEmail = "sugardaddy@bunq.com"
    /// What `sugardaddy@bunq.com` pays at most per request, as in bunq's sandbox.
    static let sugarDaddyLimit = Money(cents: 50_000)

    // MARK: Looking things up

    /// The account `{accountID}` of the URL, which must be the session's user's own (or, for an OAuth session,
    /// the granting user's).
    func requireOwnAccount(_ call: CallContext) throws(SandboxError) -> (session: Session, account: MonetaryAccount) {
        let session = try requireOwnUser(call)
        guard call.pathIds.count >= 2,
              let account = accounts(visibleTo: session.userId).first(where: { $0.id == call.pathIds[1] }) else {
            throw .notFound("MonetaryAccount")
        }
        return (session, account)
    }

    /// The label of one of the emulator's accounts.
    func label(_ account: MonetaryAccount) -> AccountLabel {
        let owner = users[account.ownerId]
        return AccountLabel(iban: account.iban, displayName: owner?.displayName ?? "", userUUID: owner?.publicUUID)
    }

    func label(_ counterparty: Counterparty) -> AccountLabel {
        switch counterparty {
        case .account(let account): label(account)
        case .external(let iban, let name): AccountLabel(iban: iban, displayName: name, userUUID: nil)
        }
    }

    /// A user's first current account: where money sent to the user's email or phone number goes.
    func mainAccount(of userId: Int) -> MonetaryAccount? {
        accounts.values.filter { $0.ownerId == userId && $0.kind == .bank }.min { $0.id < $1.id }
    }

    /// Reads a `Pointer` (`{"type": "IBAN"|"EMAIL"|"PHONE_NUMBER", "value", "name"}`) at `field`. An IBAN of the
    /// emulator's is that account; any other valid IBAN is an account elsewhere, which needs a name; an email or
    /// phone number must be a user's.
    mutating func counterparty(_ json: JSONValue?, field: String) throws(SandboxError) -> Counterparty {
        guard let pointer = json?.object, let type = pointer["type"]?.string, let value = pointer["value"]?.string else {
            throw .badRequest("Field \(field) is required: {\"type\": \"IBAN\"|\"EMAIL\"|\"PHONE_NUMBER\", \"value\", \"name\"}.")
        }
        switch type {
        case "IBAN":
            guard let iban = IBAN.normalized(value) else { throw .badRequest("The IBAN \(value) in \(field) is not valid.") }
            if let account = accounts.values.first(where: { $0.iban == iban }) { return .account(account) }
            guard let name = pointer["name"]?.string, !name.trimmingCharacters(in: .whitespaces).isEmpty else {
                throw .badRequest("Field \(field).name is required for an IBAN outside bunq.")
            }
            return .external(iban: iban, name: name)
        case "EMAIL", "PHONE_NUMBER":
            if type == "EMAIL", value.lowercased() == Self.sugarDaddyEmail { return .account(sugarDaddyAccount()) }
            let owner = users.values.first { user in
                type == "EMAIL" ? user.email?.lowercased() == value.lowercased() : user.phone == value
            }
            guard let owner, let account = mainAccount(of: owner.id) else {
                throw .badRequest("No bunq user has the \(type == "EMAIL" ? "email address" : "phone number") \(value).")
            }
            return .account(account)
        default:
            throw .badRequest("Field \(field).type must be IBAN, EMAIL or PHONE_NUMBER.")
        }
    }

    /// The sandbox benefactor's account (made on first use), with money enough for everyone.
    mutating func sugarDaddyAccount() -> MonetaryAccount {
        if let id = sugarDaddyAccountId, let account = accounts[id] { return account }
        var user = createUser(.person, displayName: "Sugar Daddy", now: configuration.now)
        user.email = Self.sugarDaddyEmail
        users[user.id] = user
        let account = mainAccount(of: user.id)!
        balances[account.id] = Money(cents: 1_000_000_000_000)
        sugarDaddyAccountId = account.id
        return account
    }

    /// A description of at most 140 characters, as bunq allows for payments to other banks.
    static func description(_ json: JSONValue?, field: String) throws(SandboxError) -> String {
        guard let text = json?.string else { throw .badRequest("Field \(field) is required.") }
        guard text.count <= 140 else { throw .badRequest("Field \(field) may hold at most 140 characters.") }
        return text
    }

    // MARK: Moving money

    /// One payment that has been checked: what a transfer needs.
    struct Transfer: Sendable {
        let amount: Money
        let to: Counterparty
        let description: String
        let merchantReference: String?
    }

    /// Reads one payment of a request (`field` names it in errors) from `account`.
    mutating func transfer(_ json: [String: JSONValue], from account: MonetaryAccount,
                           field: String = "") throws(SandboxError) -> Transfer {
        let prefix = field.isEmpty ? "" : field + "."
        let amount = try Money.parse(json["amount"], field: prefix + "amount")
        let to = try counterparty(json["counterparty_alias"], field: prefix + "counterparty_alias")
        if case .account(let target) = to, target.id == account.id {
            throw .badRequest("A payment cannot go to the monetary account it comes from.")
        }
        return Transfer(amount: amount, to: to, description: try Self.description(json["description"], field: prefix + "description"),
                        merchantReference: json["merchant_reference"]?.string)
    }

    /// Refuses `transfers` together when `account` cannot pay them all.
    func requireBalance(_ account: MonetaryAccount, for transfers: [Transfer]) throws(SandboxError) {
        let total = transfers.reduce(Money.zero) { $0 + $1.amount }
        guard total <= balances[account.id] ?? .zero else {
            throw .badRequest("The balance of monetary account \(account.id) is insufficient for this payment.")
        }
    }

    /// Moves the money: the sender's side, and the receiver's when the receiver is one of the emulator's
    /// accounts; an event for each account holder. Returns the sender's payment id.
    @discardableResult
    mutating func execute(_ transfer: Transfer, from account: MonetaryAccount, subType: String = "PAYMENT",
                          batchId: Int? = nil, now: Date) -> Int {
        let kind: PaymentRecord.Kind
        if case .account = transfer.to { kind = .bunq } else { kind = .sepa }
        let senderBalance = (balances[account.id] ?? .zero) - transfer.amount
        balances[account.id] = senderBalance
        let sent = PaymentRecord(id: nextId("payment", base: 40_000), accountId: account.id, created: now,
                                 amount: -transfer.amount, alias: label(account), counterparty: label(transfer.to),
                                 description: transfer.description, kind: kind, subType: subType,
                                 balanceAfter: senderBalance, batchId: batchId, merchantReference: transfer.merchantReference)
        payments[sent.id] = sent
        addEvent(.payment(sent.id), account: account, now: now)
        notify("PAYMENT", "PAYMENT_CREATED", account: account, object: ("Payment", sent.json))
        notify("MUTATION", "MUTATION_CREATED", account: account, object: ("Payment", sent.json))
        if case .account(let receiver) = transfer.to {
            let receiverBalance = (balances[receiver.id] ?? .zero) + transfer.amount
            balances[receiver.id] = receiverBalance
            let received = PaymentRecord(id: nextId("payment", base: 40_000), accountId: receiver.id, created: now,
                                         amount: transfer.amount, alias: label(receiver), counterparty: label(account),
                                         description: transfer.description, kind: .bunq, subType: subType,
                                         balanceAfter: receiverBalance, batchId: nil, merchantReference: nil)
            payments[received.id] = received
            addEvent(.payment(received.id), account: receiver, now: now)
            notify("PAYMENT", "PAYMENT_RECEIVED", account: receiver, object: ("Payment", received.json))
            notify("MUTATION", "MUTATION_RECEIVED", account: receiver, object: ("Payment", received.json))
        }
        return sent.id
    }

    mutating func addEvent(_ subject: EventRecord.Subject, account: MonetaryAccount, now: Date) {
        let event = EventRecord(id: nextId("event", base: 90_000), userId: account.ownerId, accountId: account.id,
                                created: now, subject: subject)
        events[event.id] = event
    }

    // MARK: Payments

    /// `POST /v1/user/{userID}/monetary-account/{accountID}/payment`.
    mutating func createPayment(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let (_, account) = try requireOwnAccount(call)
        let transfer = try transfer(call.body, from: account)
        try requireBalance(account, for: [transfer])
        return .response([("Id", .object([("id", .int(execute(transfer, from: account, now: call.now)))]))])
    }

    /// `GET …/payment`: the account's payments, newest first, paginated.
    func listPayments(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let (session, account) = try requireOwnAccount(call)
        let (page, pagination) = try ListPage.parse(call.query).apply(
            payments.values.filter { $0.accountId == account.id }, id: \.id,
            path: "/v1/user/\(session.userId)/monetary-account/\(account.id)/payment")
        return .response(page.map { ("Payment", $0.json) }, pagination: pagination)
    }

    /// `GET …/payment/{paymentID}`.
    func payment(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let (_, account) = try requireOwnAccount(call)
        guard call.pathIds.count == 3, let payment = payments[call.pathIds[2]], payment.accountId == account.id else {
            throw .notFound("Payment")
        }
        return .response([("Payment", payment.json)])
    }

    // MARK: Payment batches

    /// `POST …/payment-batch` `{"payments": [{amount, counterparty_alias, description}, …]}`: all paid or none.
    mutating func createPaymentBatch(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let (_, account) = try requireOwnAccount(call)
        guard let entries = call.body["payments"]?.array, !entries.isEmpty else {
            throw .badRequest("Field payments is required: a list of payments.")
        }
        guard entries.count <= 200 else { throw .badRequest("A payment batch holds at most 200 payments.") }
        var transfers: [Transfer] = []
        for (index, entry) in entries.enumerated() {
            guard let object = entry.object else { throw .badRequest("Field payments[\(index)] must be a payment object.") }
            transfers.append(try transfer(object, from: account, field: "payments[\(index)]"))
        }
        try requireBalance(account, for: transfers)
        let batchId = nextId("payment-batch", base: 7_000)
        let paymentIds = transfers.map { execute($0, from: account, batchId: batchId, now: call.now) }
        paymentBatches[batchId] = PaymentBatchRecord(id: batchId, accountId: account.id, created: call.now,
                                                     paymentIds: paymentIds)
        return .response([("Id", .object([("id", .int(batchId))]))])
    }

    func paymentBatchJSON(_ batch: PaymentBatchRecord) -> BunqJSON {
        .object([("id", .int(batch.id)), ("created", .string(BunqTime.format(batch.created))),
                 ("updated", .string(BunqTime.format(batch.created))),
                 ("payments", .object([("Payment", .array(batch.paymentIds.compactMap { payments[$0]?.json }))]))])
    }

    func listPaymentBatches(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let (session, account) = try requireOwnAccount(call)
        let (page, pagination) = try ListPage.parse(call.query).apply(
            paymentBatches.values.filter { $0.accountId == account.id }, id: \.id,
            path: "/v1/user/\(session.userId)/monetary-account/\(account.id)/payment-batch")
        return .response(page.map { ("PaymentBatch", paymentBatchJSON($0)) }, pagination: pagination)
    }

    func paymentBatch(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let (_, account) = try requireOwnAccount(call)
        guard call.pathIds.count == 3, let batch = paymentBatches[call.pathIds[2]], batch.accountId == account.id else {
            throw .notFound("PaymentBatch")
        }
        return .response([("PaymentBatch", paymentBatchJSON(batch))])
    }

    // MARK: Request-inquiries

    /// `POST …/request-inquiry`: asks a counterparty for money. `sugardaddy@bunq.com` pays up to 500.00 EUR at
    /// once and refuses more; anyone else leaves it `PENDING`.
    mutating func createRequestInquiry(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let (_, account) = try requireOwnAccount(call)
        let amount = try Money.parse(call.body["amount_inquired"], field: "amount_inquired")
        let from = try counterparty(call.body["counterparty_alias"], field: "counterparty_alias")
        if case .account(let target) = from, target.id == account.id {
            throw .badRequest("A request cannot be made to the monetary account it is made from.")
        }
        let description = try Self.description(call.body["description"], field: "description")
        guard let allowBunqme = call.body["allow_bunqme"]?.bool else {
            throw .badRequest("Field allow_bunqme is required (true or false).")
        }
        var request = RequestInquiryRecord(
            id: nextId("request-inquiry", base: 20_000), accountId: account.id, created: call.now, updated: call.now,
            responded: nil, amount: amount, amountResponded: nil, alias: label(account), counterparty: label(from),
            description: description, merchantReference: call.body["merchant_reference"]?.string,
            allowBunqme: allowBunqme, status: .pending)
        // The request's event and callback come before the payment that answers it.
        requestInquiries[request.id] = request
        addEvent(.requestInquiry(request.id), account: account, now: call.now)
        notify("REQUEST", "REQUEST_INQUIRY_CREATED", account: account, object: ("RequestInquiry", request.json))
        if case .account(let payer) = from, payer.id == sugarDaddyAccountId {
            request.responded = call.now
            if amount <= Self.sugarDaddyLimit {
                request.status = .accepted
                request.amountResponded = amount
                execute(Transfer(amount: amount, to: .account(account), description: description, merchantReference: nil),
                        from: payer, subType: "REQUEST", now: call.now)
            } else {
                request.status = .rejected
            }
            requestInquiries[request.id] = request
            notify("REQUEST", "REQUEST_INQUIRY_\(request.status.rawValue)", account: account,
                   object: ("RequestInquiry", request.json))
        }
        return .response([("Id", .object([("id", .int(request.id))]))])
    }

    func listRequestInquiries(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let (session, account) = try requireOwnAccount(call)
        let (page, pagination) = try ListPage.parse(call.query).apply(
            requestInquiries.values.filter { $0.accountId == account.id }, id: \.id,
            path: "/v1/user/\(session.userId)/monetary-account/\(account.id)/request-inquiry")
        return .response(page.map { ("RequestInquiry", $0.json) }, pagination: pagination)
    }

    func requestInquiry(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let (_, account) = try requireOwnAccount(call)
        guard call.pathIds.count == 3, let request = requestInquiries[call.pathIds[2]], request.accountId == account.id else {
            throw .notFound("RequestInquiry")
        }
        return .response([("RequestInquiry", request.json)])
    }

    // MARK: Events

    /// The event with its object inside, as the object is now.
    func eventJSON(_ event: EventRecord) -> BunqJSON? {
        let object: (String, BunqJSON)
        let status: String
        switch event.subject {
        case .payment(let id):
            guard let payment = payments[id] else { return nil }
            object = ("Payment", payment.json)
            status = "FINALIZED"
        case .requestInquiry(let id):
            guard let request = requestInquiries[id] else { return nil }
            object = ("RequestInquiry", request.json)
            status = request.status == .pending ? "AWAITING_REPLY" : "FINALIZED"
        case .draftPayment(let id):
            guard let draft = draftPayments[id] else { return nil }
            object = ("DraftPayment", draftPaymentJSON(draft))
            status = draft.status == .pending ? "AWAITING_REPLY" : "FINALIZED"
        }
        let created = BunqTime.format(event.created)
        return .object([
            ("id", .int(event.id)),
            ("created", .string(created)),
            ("updated", .string(created)),
            ("action", "CREATE"),
            ("user_id", .string(String(event.userId))),
            ("monetary_account_id", .string(String(event.accountId))),
            ("object", .object([object])),
            ("status", .string(status)),
        ])
    }

    /// The events a session's user may see: its own, or for an OAuth session the granting user's.
    func visibleEvents(_ session: Session) -> [EventRecord] {
        let ownerId = apiKeyUsers[session.userId]?.grantingUserId ?? session.userId
        return events.values.filter { $0.userId == ownerId }
    }

    /// `GET /v1/user/{userID}/event`, newest first, paginated; `monetary_account_id` narrows it to one account.
    func listEvents(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let session = try requireOwnUser(call)
        var visible = visibleEvents(session)
        if let text = call.query["monetary_account_id"] {
            guard let accountId = Int(text) else { throw .badRequest("Parameter monetary_account_id must be an integer.") }
            visible = visible.filter { $0.accountId == accountId }
        }
        let (page, pagination) = try ListPage.parse(call.query).apply(visible, id: \.id,
                                                                         path: "/v1/user/\(session.userId)/event")
        return .response(page.compactMap { event in eventJSON(event).map { ("Event", $0) } }, pagination: pagination)
    }

    func event(_ call: CallContext) throws(SandboxError) -> BunqJSON {
        let session = try requireOwnUser(call)
        guard call.pathIds.count == 2, let event = visibleEvents(session).first(where: { $0.id == call.pathIds[1] }),
              let json = eventJSON(event) else { throw .notFound("Event") }
        return .response([("Event", json)])
    }
}
