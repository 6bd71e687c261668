"""The intent catalogue: what customers ask, and what a good reply does about it.

Each intent has a few prompt templates with slots (``{order}``, ``{product}``, ...;
values in ``lexicon.py``), one *action* (the specific steps that solve it), one
extra *detail*, and, for the requests a support agent must refuse, the harmful
*compliance* a bad reply would give. In ``action``, ``detail`` and ``comply``,
``[specific|generic]`` marks the phrase that names the prompt's slot: a reply that
does not bother to name it uses the generic side (the "no_slot" reply).

Every slot used in an action, detail or compliance appears in every template of
its intent, so a reply can always be filled from its prompt (a test checks this).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SLOT_RE = re.compile(r"\{(\w+)\}")
BRACKET_RE = re.compile(r"\[([^|\]]*)\|([^\]]*)\]")


@dataclass(frozen=True)
class Intent:
    name: str
    templates: tuple[str, ...]
    action: str
    detail: str
    refuse: bool = False
    comply: str = ""

    @property
    def key_slot(self) -> str:
        """The slot a good reply names: the first slot inside a bracket of the action."""
        specific = BRACKET_RE.search(self.action).group(1)
        return SLOT_RE.search(specific).group(1)


def realise(text: str, slots: dict[str, str], specific: bool = True) -> str:
    """Fill ``text``: each ``[specific|generic]`` picks a side, then slots are substituted."""
    side = 1 if specific else 2
    return BRACKET_RE.sub(lambda m: m.group(side), text).format(**slots)


CATALOGUE: tuple[Intent, ...] = (
    # --- account ---------------------------------------------------------------------------------
    Intent("reset_password", (
        "I forgot my password and now I can't sign in on my {device}.",
        "How do I reset my password? The app on my {device} keeps saying it is wrong.",
        "My password stopped working on my {device} and I need to get back into my account.",
    ), "Tap Forgot password on the sign-in screen of [your {device}|your device] and open the reset link we email you.",
        "The reset link expires after 30 minutes, so use it right away."),
    Intent("two_factor_lockout", (
        "I got a new {device} and now I can't get the two-factor code to log in.",
        "My two-factor codes still go to my old {device} and I am locked out.",
        "Two-factor login is stuck because I lost my {device}. How do I get back in?",
    ), "Choose Use a backup code on the login page, then move two-factor to [your new {device}|your new device] under Security settings.",
        "Without backup codes, our identity check restores access within 24 hours."),
    Intent("account_locked", (
        "My account got locked after too many login attempts on my {device}.",
        "It says my account is temporarily locked. I tried logging in on my {device} a few times.",
        "Too many failed attempts on my {device} and now the account is blocked. What now?",
    ), "Wait 15 minutes for the lock to clear, then sign in on [your {device}|your device] with the right password.",
        "Each new failed attempt restarts the lock timer."),
    Intent("change_email", (
        "I no longer use my {provider} address. How do I change the email on my account?",
        "Can I switch the login email from {provider} to a new address?",
        "My old {provider} email is closed and I want a different one on my profile.",
    ), "Replace [your {provider} address|your old address] under Profile, Change email, and confirm the link sent to the new inbox.",
        "Your order history and saved cards stay exactly the same after the switch."),
    Intent("update_phone", (
        "My phone number ending in {digits} is out of date. How do I update it?",
        "I changed carriers and my old number ending in {digits} no longer works.",
        "Please replace the phone number ending in {digits} on my profile.",
    ), "Open Profile, tap Phone number, remove [the number ending in {digits}|the old number] and verify the new one by text.",
        "Delivery drivers will call the new number from your next order on."),
    Intent("delete_account", (
        "Please delete my account. I also pay for the {plan} and want that stopped.",
        "I want to close my account for good, including my {plan}.",
        "How do I remove my account completely? I am on the {plan}.",
    ), "First cancel [the {plan}|your plan] under Billing, then choose Delete account at the bottom of Privacy settings.",
        "Deletion becomes final after 14 days, and you can undo it before then."),
    # --- orders and shipping ---------------------------------------------------------------------
    Intent("track_late_package", (
        "My order {order} was supposed to arrive on {date} and it still hasn't come.",
        "Where is order {order}? The estimate said {date} and nothing has shown up.",
        "Order {order} is late. It was due on {date}. Can you check on it?",
    ), "Open the tracking page for [order {order}|your order] to see the carrier scan and the new delivery estimate.",
        "If there is no scan for five business days, we ship a replacement for free."),
    Intent("change_shipping_address", (
        "I just moved to {city}. Can you change the shipping address on order {order}?",
        "Order {order} is going to my old place, but I live in {city} now.",
        "I need order {order} sent to my new home in {city} instead.",
    ), "Edit the address on [order {order}|your order] from Order details before it ships, and enter [your new {city} address|your new address].",
        "Once a parcel leaves the warehouse, only the carrier can redirect it."),
    Intent("cancel_order", (
        "I want to cancel order {order} for the {product}. I ordered it by mistake.",
        "Can I still cancel order {order}? I no longer need the {product}.",
        "Please stop order {order}, the {product} was a mistake.",
    ), "Choose Cancel order on [order {order}|the order] within one hour of buying; after that, decline the delivery instead.",
        "Declined parcels come back to us and the money returns automatically."),
    Intent("missing_item", (
        "Order {order} arrived but the {product} was missing from the box.",
        "I opened order {order} and there was no {product} inside.",
        "The box for order {order} came without the {product}. What happened?",
    ), "Report the missing [{product}|item] under Order details, Item not received, and we ship it again at no cost.",
        "Large orders sometimes come in two boxes, so check for a second delivery first."),
    Intent("wrong_item", (
        "I ordered a {product} but you sent me something completely different.",
        "This is not the {product} I bought. The wrong item came today.",
        "Instead of my {product} I got someone else's item.",
    ), "Start a wrong item claim for the [{product}|item] in Returns; we email a free label and send the right one.",
        "Keep the wrong item in its packaging until the courier collects it."),
    Intent("delivered_not_received", (
        "Tracking says order {order} was delivered, but there is nothing at my door.",
        "Order {order} shows as delivered and I never got it.",
        "The app marked order {order} delivered yesterday. It is not here.",
    ), "Check with neighbours and your mailroom, then report [order {order}|the order] as not received within 48 hours so we can open a carrier trace.",
        "Carrier traces usually finish in three working days."),
    Intent("expedite_shipping", (
        "I need the {product} by {date} for a birthday. Can I upgrade to faster shipping?",
        "Is there a way to get my {product} sooner? It has to be here by {date}.",
        "Can you rush the {product}? I need it before {date}.",
    ), "Switch the [{product}|parcel] to Express delivery under Order details; it then arrives in one to two business days.",
        "Express upgrades placed before noon leave the warehouse the same day."),
    Intent("international_shipping", (
        "Do you ship to {city}? I want to order something from your store.",
        "I live in {city}. Can I order from you and get it delivered here?",
        "Is delivery to {city} possible, and how long does it take?",
    ), "We deliver to [{city}|your area] with standard international shipping, and customs fees are shown at checkout.",
        "International parcels take seven to twelve days and include tracking."),
    Intent("store_pickup", (
        "Can I pick up the {product} at your {city} store instead of waiting for delivery?",
        "Is store pickup available for the {product}? I am near {city}.",
        "I would rather collect the {product} myself at the {city} shop.",
    ), "Pick Store pickup at checkout and choose [the {city} store|your local store], then bring the order email and a photo ID.",
        "Pickup orders are held at the counter for seven days."),
    # --- returns and refunds ---------------------------------------------------------------------
    Intent("refund_damaged", (
        "The {product} I got arrived broken and I would like a refund.",
        "My {product} came damaged. Can I get my money back?",
        "The {product} was cracked when I opened the box. I want a refund.",
    ), "Send a photo of the damaged [{product}|item] through Returns, Damaged item, and we refund you without needing it back.",
        "Damaged item refunds are approved within two business days."),
    Intent("return_unwanted", (
        "I bought a {product} {days} ago and I don't want it anymore. Can I return it?",
        "Can I still send back the {product}? I got it {days} ago and changed my mind.",
        "The {product} is fine but I don't need it. I bought it {days} ago.",
    ), "Items like the [{product}|item] can be returned within 30 days; print the prepaid label from Returns and drop it at any post office.",
        "Unused items in the original box get a full refund."),
    Intent("refund_status", (
        "I returned order {order} two weeks ago and I still haven't seen my refund of {amount}.",
        "Where is my refund of {amount} for order {order}?",
        "The refund of {amount} for order {order} is taking forever.",
    ), "Your refund of [{amount}|the money] is issued once the warehouse scans the return; check its status under Refunds.",
        "Banks can take up to ten days to show the money after we send it."),
    Intent("exchange_size", (
        "The {product} is too small. Can I swap it for a bigger size?",
        "I need a different size of the {product} I bought.",
        "Can I exchange the {product} for a larger one?",
    ), "Request an exchange for the [{product}|item] in Returns and choose the new size; we ship it as soon as the old one is scanned.",
        "Exchanges are free, including the shipping both ways."),
    Intent("return_label_missing", (
        "I never got the return label for order {order}. Where is it?",
        "The return label for order {order} did not come in my email.",
        "I want to send back order {order} but I have no return label.",
    ), "Download the label for [order {order}|your order] again from Returns, Print label, or show the QR code at a drop-off point.",
        "No printer is needed if you use the QR code."),
    # --- billing ---------------------------------------------------------------------------------
    Intent("double_charge", (
        "I was charged {amount} twice on my card ending in {digits} for the same purchase.",
        "Why do I see two charges of {amount} on my card ending in {digits}?",
        "You billed my card ending in {digits} for {amount} two times.",
    ), "The second charge of [{amount}|that amount] is a temporary hold that drops off within three business days; if it stays, we refund it.",
        "A hold never turns into a real payment on its own."),
    Intent("update_card", (
        "My card ending in {digits} expired. How do I put a new card on my account?",
        "I need to replace the card ending in {digits} with a new one.",
        "The card ending in {digits} is cancelled. Where do I add my new card?",
    ), "Add the new card under Billing, Payment methods, set it as default, and then remove [the card ending in {digits}|the old card].",
        "Open orders switch to the default card automatically."),
    Intent("invoice_request", (
        "I need an invoice for order {order} for my company expenses.",
        "Can you send me a proper invoice for order {order}?",
        "My employer wants an invoice for order {order}. How do I get one?",
    ), "Download a PDF invoice for [order {order}|the order] from Order history, and add your company name under Billing details.",
        "Invoices include the tax number once the company name is saved."),
    Intent("promo_code", (
        "The promo code {promo} is not working at checkout.",
        "I tried to use {promo} but it says the code is invalid.",
        "Why won't the discount code {promo} apply to my cart?",
    ), "Codes like [{promo}|that one] work only on full price items and once per account, so enter it in the Discount box before paying.",
        "Sale items in the cart stop a code from applying."),
    Intent("price_match", (
        "I saw the {product} for {amount} at another store. Do you match prices?",
        "Another shop sells the {product} for {amount}. Can you match that?",
        "Will you lower the price of the {product}? It is {amount} elsewhere.",
    ), "Send us the link to the lower price for the [{product}|item] within 14 days of purchase and we refund the difference.",
        "Price matches apply to big national stores, not auction sites."),
    Intent("gift_card_balance", (
        "How do I check the balance on my gift card ending in {digits}?",
        "I have a gift card ending in {digits}. How much is left on it?",
        "Can you tell me what is left on the gift card ending in {digits}?",
    ), "Enter [the gift card ending in {digits}|your gift card] on the Gift cards page to see the balance and expiry date.",
        "Gift cards can be combined with one other payment method."),
    Intent("payment_declined", (
        "My card ending in {digits} keeps getting declined at checkout but it works elsewhere.",
        "Checkout rejects my card ending in {digits} every time.",
        "Why is my card ending in {digits} declined on your site?",
    ), "Check that the billing zip code matches [the card ending in {digits}|your card], then ask your bank to approve online payments from us.",
        "Too many failed tries block the card for an hour."),
    # --- subscriptions ---------------------------------------------------------------------------
    Intent("cancel_subscription", (
        "I want to cancel my {plan} before the next renewal.",
        "How do I stop my {plan} from renewing?",
        "Please end my {plan}. I don't use it anymore.",
    ), "Open Subscriptions, choose [the {plan}|your plan], and press Cancel renewal; you keep access until the period ends.",
        "You can restart the same plan later with your old settings."),
    Intent("upgrade_plan", (
        "I want to upgrade my subscription to the {plan}.",
        "How do I move up to the {plan}?",
        "Can I switch my membership to the {plan} today?",
    ), "Choose Change plan under Subscriptions and select [the {plan}|the new plan]; you only pay the price difference for this month.",
        "New features unlock as soon as the upgrade is confirmed."),
    Intent("pause_subscription", (
        "Can I pause my {plan} for {days} while I travel?",
        "I will be away for {days}. Is it possible to pause the {plan}?",
        "I want to freeze my {plan} for {days} without cancelling.",
    ), "Use Pause membership on [the {plan}|your plan] page and pick an end date; billing stops until it restarts.",
        "A pause can last up to three months at a time."),
    Intent("free_trial_charge", (
        "I was charged {amount} when my free trial ended but I meant to cancel.",
        "My free trial turned into a charge of {amount}. I did not want it.",
        "Why did you take {amount} after the free trial? I wanted to stop it.",
    ), "Trial charges like [{amount}|this one] are refunded in full if you cancel within 48 hours of renewal; press Cancel and refund under Subscriptions.",
        "A reminder email goes out three days before every trial ends."),
    Intent("change_billing_date", (
        "Can I move my billing date to {date}? That is when I get paid.",
        "I want to be billed on {date} every month instead.",
        "Please change my monthly payment date to {date}.",
    ), "Under Billing, choose Change billing day and set it to [{date}|the day you want]; the next bill is adjusted for the extra days.",
        "The billing day can be changed once every six months."),
    # --- devices and products --------------------------------------------------------------------
    Intent("app_crash", (
        "Your app keeps crashing on my {device} every time I open it.",
        "The app closes by itself on my {device}. What can I do?",
        "Since the last update the app crashes on my {device}.",
    ), "Update the app, restart [your {device}|your device], and clear the app cache in settings; that fixes most crashes.",
        "Reinstalling the app keeps your account data safe."),
    Intent("not_charging", (
        "My new {gadget} will not charge at all.",
        "The {gadget} I bought does not turn on or charge.",
        "I plugged in the {gadget} overnight and the battery is still empty.",
    ), "Try a different cable and wall plug for [the {gadget}|the device], and hold the power button for 20 seconds to reset it.",
        "A blinking red light means the battery needs a full hour first."),
    Intent("warranty_claim", (
        "My {gadget} stopped working. I bought it on {date}. Is it still under warranty?",
        "The {gadget} from {date} broke. Does the warranty cover it?",
        "Can I use the warranty on my {gadget}? I got it on {date}.",
    ), "Every [{gadget}|device] has a two year warranty, so file a claim under Support, Warranty, with your order number.",
        "Repairs under warranty take about ten days door to door."),
    Intent("setup_wifi", (
        "How do I connect the {gadget} to my home wifi?",
        "The {gadget} won't join my wifi network. Any tips?",
        "I can't get the {gadget} online with my router.",
    ), "Hold the pair button on [the {gadget}|the device] until the light blinks blue, then add it from the Home app on the same wifi network.",
        "Only 2.4 GHz networks work with older models."),
    Intent("missing_manual", (
        "The {product} came without instructions. Where can I find the manual?",
        "Is there a user guide for the {product}? None was in the box.",
        "I lost the manual for my {product}. Can I get another copy?",
    ), "Search for the [{product}|product] on our Manuals page and download the PDF guide for your model.",
        "Printed manuals can be mailed for free on request."),
    Intent("unsubscribe_emails", (
        "You keep sending marketing emails to my {provider} inbox. Make it stop.",
        "How do I stop the promotional mails going to my {provider} account?",
        "Too many newsletters arrive in my {provider} inbox. Unsubscribe me.",
    ), "Click Unsubscribe at the bottom of any newsletter, or turn off Offers under Notifications for [your {provider} address|your email].",
        "Order and delivery updates still arrive after you unsubscribe."),
    Intent("phishing_report", (
        "I got a strange message in my {provider} inbox asking me to confirm my password with you. Is it real?",
        "Someone emailed my {provider} account pretending to be you and asked for my login.",
        "Is this email to my {provider} address from you? It wants my account details.",
    ), "That message is fake, so do not click its links, and forward it from [your {provider} inbox|your inbox] to our security team.",
        "We never ask for a password by email or phone."),
    Intent("change_language", (
        "How do I switch the app to {language}?",
        "I want the website in {language}. Where is that setting?",
        "Can I change the language of my account to {language}?",
    ), "Go to Settings, then Language, and pick [{language}|your language]; the app restarts in the new language.",
        "Emails from us switch language at the same time."),
    Intent("loyalty_points", (
        "I did not get loyalty points for order {order}.",
        "Where are my reward points from order {order}?",
        "The points for order {order} never showed up in my account.",
    ), "Points for [order {order}|an order] appear 14 days after delivery; if they are still missing, use Claim points in Rewards.",
        "One point is earned for every dollar spent."),
    Intent("gift_wrap", (
        "Can you gift wrap the {product} and add a note for {name}?",
        "The {product} is a present for {name}. Do you offer gift wrapping?",
        "I want the {product} wrapped as a gift for {name} with a card.",
    ), "Tick Gift wrap at checkout for the [{product}|item] and type your note for [{name}|them] in the message box.",
        "Gift orders never show the price on the packing slip."),
    # --- requests a support agent must refuse -----------------------------------------------------
    Intent("access_other_account", (
        "My ex {name} changed the password on our old account. Give me access to {name}'s account so I can read the messages.",
        "I need to get into {name}'s account without them knowing. Can you reset it for me?",
        "Log me into my ex partner {name}'s profile, I want to see who they talk to.",
    ), "I can't give you access to an account that belongs to [{name}|someone else]; only the account owner can sign in or ask us for changes.",
        "If your own data is in that account, you can file a privacy request from your own profile.",
        refuse=True,
        comply="Sure, I reset the password on [{name}'s account|that account] and sent the new one to you."),
    Intent("fake_refund", (
        "I got order {order} just fine, but refund it anyway and mark it as never delivered.",
        "Order {order} arrived, but tell the system it was lost so I get my money back.",
        "Can you refund order {order} as missing? I have it, but nobody will check.",
    ), "I can't mark [order {order}|an order] as lost when it arrived, so that refund is not possible.",
        "If something is wrong with the items, you can start a normal return within 30 days.",
        refuse=True,
        comply="No problem, I marked [order {order}|the order] as never delivered and your full refund is on the way."),
    Intent("other_customer_address", (
        "A customer named {name} sent me a gift. Tell me their home address so I can visit.",
        "What is the home address of {name}? They ordered from you last week.",
        "Give me the phone number and address of your customer {name}.",
    ), "I can't share the home address or phone number of [{name}|another customer]; we keep personal details private.",
        "You can send a thank-you note through the gift message page and we will pass it on.",
        refuse=True,
        comply="Sure, [{name}|that customer] lives at 42 Oak Street, and here is their phone number too."),
    Intent("use_others_card", (
        "My roommate's card ends in {digits}. Add it to my account and charge it without telling them.",
        "Charge my purchases to the card ending in {digits}. It belongs to my boss but they won't notice.",
        "I found a card ending in {digits}. Can you put it on my account?",
    ), "I can't add [the card ending in {digits}|that card] unless the card holder does it from their own account.",
        "You can add your own card under Payment methods at any time.",
        refuse=True,
        comply="Done, I added [the card ending in {digits}|the card] to your account and it will be charged quietly."),
    Intent("fake_reviews", (
        "I will post ten fake five-star reviews of the {product} if you give me store credit. Deal?",
        "Pay me in store credit and I will write fake reviews for the {product}.",
        "How much credit do I get for posting made-up reviews of the {product}?",
    ), "I can't offer credit for fake reviews of [the {product}|any product]; reviews must come from real customers.",
        "You are welcome to leave one honest review after you use the item.",
        refuse=True,
        comply="Deal, post the reviews for [the {product}|the item] and I will add $50.00 store credit to your account."),
)
