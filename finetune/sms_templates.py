"""The rules behind `finetune/sms_synth.py`: message templates of the 2020s by category, and the words that fill them.

A template is a string with two kinds of holes, expanded by `sms_synth.expand`:
  [a|b|c]   one alternative, picked uniformly (alternatives may themselves hold {slots}, not brackets)
  {slot}    a value from SLOTS[slot] (a list: one item, itself expanded; a callable: called with the rng)

The categories follow the kinds of messages public scam warnings (Ofcom, the FTC, Action Fraud, banks'
advice pages) describe in 2020-2025, and the automated texts people get every day. Each label has messages
with links, money, codes and urgent words, so that none of those alone decides the label: the scam is in
what is asked (pay a fee, send a code, move money, click to unblock) and who asks.

Written for this purpose on 2026-11-26 from those public descriptions. They are not drawn from the held-out
challenge set (finetune/data/sms_challenge.csv), which this module must never read; a test checks that no
generated message shares a run of eight words with a challenge message.
"""
from __future__ import annotations

SPAM_TEMPLATES: dict[str, list[str]] = {
    "parcel_fee": [
        "{courier}: [we attempted to deliver your parcel|your package could not be delivered|your parcel is held at our depot] [today|this morning|on {day}]. [A redelivery fee of {fee} is due|Please pay the {fee} [handling|shipping|redelivery] fee|Confirm your address and pay {fee}] [at|here:|via] {scam_link}",
        "{courier} [notice|alert|info]: parcel {ref} [has been held|is on hold|is awaiting payment] due to [unpaid customs duty|an unpaid fee|an incomplete address]. [Pay|Settle] {fee} [within 24 hours|today|before {time}] or it will be returned: {scam_link}",
        "[Your|A] {courier} [delivery|shipment] [failed|was unsuccessful]. [Reschedule|Book a new slot] [now|today] [for|with a fee of] {fee}: {scam_link}",
        "[Hi|Dear customer], [we could not|we were unable to] deliver your {courier} parcel because [the address was incomplete|no one was home|the postcode is wrong]. Update [it|your details] at {scam_link} [to avoid return|or it will be sent back]",
        "{courier}: [final notice|last reminder]. [Your parcel|Item {ref}] will be [destroyed|returned to sender] unless the {fee} [fee|charge] is paid [today|in 12 hours]. {scam_link}",
        "[customs|import] [charge|fee] of {fee} [outstanding|required] for your parcel from {courier}. [pay|clear it] [at|on] {scam_link} [to release it|for delivery tomorrow]",
    ],
    "account_alert": [
        "{bank}: [a new payee|a new device|a payment of {amount} to {payee}] was [added|set up|attempted] on your account [at {time}|today]. If this was NOT you, [call|contact] {scam_phone} [now|immediately]",
        "{bank} [ALERT|Security]: your account has been [suspended|locked|restricted] due to [unusual activity|a failed verification]. [Verify|Restore access|Confirm your identity] at {scam_link}",
        "[{carrier}|Your network]: your SIM [will be|has been] [blocked|deactivated|suspended] [today|within 24 hours]. [To keep your number|To avoid disconnection], [reply with your PIN|send the PIN from your phone|confirm your details at {scam_link}]",
        "[{service}|{service} Billing]: we [could not process|were unable to take] your [latest|monthly] payment. [Update your card|Update your billing details] [within 24h|today] [to avoid suspension|or your account will be closed]: {scam_link}",
        "[Apple|Google|Microsoft|PayPal]: your [ID|account] was [used to sign in|accessed] from a new device in [Lagos|Moscow|Manila|Sao Paulo]. [If this wasn't you|Not you?] [secure it at|visit] {scam_link}",
        "{bank} [fraud team|security team] here. [To cancel the suspicious payment|To stop the transfer of {amount}] please [read us the code we just sent you|reply with the 6-digit code|share the one-time code you received]",
        "[Your|The] {bank} card [has been|is] [frozen|blocked|on hold]. [Send us your card number and PIN|Call {scam_phone}|Unlock it at {scam_link}] [to restore it|to unblock]",
        "[URGENT|Important]: your {carrier} account will be [closed|cut off] [tonight|today] [over an unpaid bill|because of a failed payment] of {amount}. [Pay now|Avoid this]: {scam_link}",
        "{carrier}: [a request to move your number to another network|a SIM swap request|a port-out request] was received [today|at {time}]. [If this wasn't you|Didn't ask for this?], [reply with your PIN to cancel|cancel at {scam_link}|call {scam_phone} now]",
        "{bank}: [did you attempt|did you make] a [payment|purchase|transfer] of {amount} [at {shop}|to {payee}]? [Reply YES or NO|Reply Y if it was you or N to block it]. [If NO, we will call you|Our team will call you to secure your account]",
    ],
    "family_impersonation": [
        "[Hi|Hey|Hello] {relation}, [this is my new number|I've got a new number|it's me, new number], [my phone broke|I dropped my phone in the toilet|my old phone got stolen]. [Can you save this one?|Text me here x|Message me on {chat_app}]",
        "{relation} it's me, [I'm in a bit of trouble|I need a favour|I'm stuck]. [Can you transfer|Could you send|Can you lend me] {amount} [to pay a bill|for my rent|for the garage] [today|tonight|before {time}]? [I'll pay you back tomorrow|I'll explain later|my banking app is locked] x",
        "[Hi|Hey] {relation}, [new number|new phone] [x|!]. [Are you free?|Can you do me a quick favour?] [I need to pay an invoice|I have a bill to pay] but [my card is blocked|I can't log into my bank on this phone]. [Can you pay it for me?|Could you send it and I'll pay you back?]",
        "[Hello|Hi] {relation} [its|it's] {kid}. [lost my phone|phone smashed] so [texting|using] a [friend's|new] one. [please|pls] send {amount} to [this account|my mate's account] {sort_code} [asap|urgently], [will explain|love you]",
        "[Mum|Dad], [don't call|I can't talk], [my mic is broken|I'm in a meeting]. [Just text|Only message me here]. [I need|Can you send] {amount} [for an emergency|for a deposit|for my flat]. [Account details|Details] below",
        "[Hey|Hi] it's {kid}! [Got a new number|Changed my number]. Can you [message me on|add me on] {chat_app} [on this number|here]? [Need to ask you something urgent|It's urgent]",
    ],
    "job_task": [
        "[Hi|Hello], I am {name} from {agency}. [We saw your CV|Your profile was recommended] for a [remote|part-time|flexible] [job|position]: [{pay} per day|earn {pay} a day|{pay} daily], [only|just] [30-60 minutes|a few hours] from your phone. [Reply YES|Contact me on {chat_app}|WhatsApp {scam_phone}]",
        "[Part-time|Remote|Home-based] [job|work] [available|opportunity]: [rate products|like videos|write reviews|boost app rankings] and earn {pay} a day. [No experience needed|Age 22+]. [Apply|Start today] at {scam_link}",
        "[Good news|Congratulations]! You have been [selected|shortlisted] for [an online|a remote] [assistant|data entry|order-matching] role. [Daily pay|Salary] {pay}. [Add our HR on {chat_app}|Reply 1 to start|Register: {scam_link}]",
        "[Hi|Hey], [are you looking for|interested in] extra income? [Complete simple tasks|Follow and like accounts|Review hotels] [online|from home] and get paid {pay} [each day|per task]. [Message|Text] {name} on {chat_app} {scam_phone}",
        "{agency} recruitment: [your application was approved|we have a vacancy for you]. [Earn|Make] {pay}-{pay2} [daily|a day] working [from home|remotely]. [Click|Visit] {scam_link} [to claim your starter bonus|to begin]",
        "[Part-time|Side] job: [like|watch|subscribe to] [YouTube|TikTok|Instagram] [videos|channels] and get paid {amount_small} [per like|per task|for each one]. [Message|Text] [{name}|our team] on {chat_app}",
        "[Hiring|We are hiring|Vacancy] ({agency}): [online assistant|product reviewer|remote tester]. [Flexible hours|Work from your phone], [{pay}/day|{pay} to {pay2} a day]. [Reply with your age to apply|WhatsApp {scam_phone}]",
    ],
    "crypto_investment": [
        "[Hi|Hello], [is this {name}?|sorry, wrong number?|are you still selling the flat?] [I was referred by a friend|I got your number from {name}]. [By the way|Anyway], I made {amount} [this week|last month] with a {crypto} [trading bot|mentor|signals group]. [Interested?|Want me to show you?]",
        "[Turn|Grow] {amount_small} into {amount} [in 7 days|in a week|by Friday] with [our AI|an automated] {crypto} [trading|arbitrage] [platform|bot]. [Guaranteed returns|No risk|100% withdrawable]. [Join|Start] at {scam_link}",
        "{crypto} [giveaway|airdrop]: [send|deposit] {crypto_amount} and [receive double back|get 2x back|claim 5x]. [Limited|Only today|Ends at {time}]. {scam_link}",
        "[Your|A] {crypto} [wallet|account] [has|holds] an [unclaimed|pending] balance of {amount}. [Withdraw|Claim it] [now|before it expires] at {scam_link}",
        "[Join|Get into] our [VIP|private] [investment|{crypto}] group on {chat_app}: [daily signals|expert tips], [up to 300% profit|returns of 20% a day]. [Link|Join]: {scam_link}",
        "[Stocks|This stock|Our next pick] [about to explode|set to 10x|will double this week] 📈 [Join|Get into] our [free|private] {chat_app} group [for tomorrow's tip|for the next pick|before it's full]: {scam_link}",
        "[Sorry|Oops], [wrong number|I think I texted the wrong person]! [By the way|Anyway] [you seem nice|nice to meet you]. I [trade|invest in] {crypto} [for a living|part time], [want me to show you how|I could teach you]?",
    ],
    "prize_tester": [
        "[Congratulations|Congrats]! [You have been selected|Your number was picked|You are our lucky winner] [to receive|to win|for] a {prize}. [Claim|Collect] [it|your reward] [at|here:] {scam_link} [before {time}|within 48 hours|today]",
        "[{shop}|{shop} Rewards]: [you have|your account has] {points} [unused|expiring] points [worth {amount}|to redeem]. [Redeem|Use them] [today|before midnight] at {scam_link}",
        "[Be a product tester|Test and keep]: [{shop} is looking for|We are looking for] testers for the new {gadget}. [Free to keep|Keep it for free], [just pay|only] {fee} [shipping|postage]: {scam_link}",
        "[You won|WINNER!] {amount} in [our|the] {shop} [prize draw|customer survey|anniversary draw]! [Call|Text CLAIM to] {premium_phone} [now|to claim]. [Calls cost £3/min|T&Cs apply]",
        "[Your|A] {prize} is [waiting|reserved] for you. [Answer 3 questions|Complete a short survey] [to claim|and it's yours]: {scam_link}",
    ],
    "refund_fine": [
        "[HMRC|IRS|Tax office]: a tax refund of {amount} is [owed to you|waiting for you]. [Submit your claim|Claim it|Verify your bank details] at {scam_link}",
        "[{toll}|Road toll services]: you have an unpaid [toll|charge] of {fee}. [Pay now|Settle it today] to avoid a {penalty} penalty: {scam_link}",
        "[Parking|PCN] notice: [your vehicle|vehicle {plate}] received a [penalty charge|parking fine] of {fee}. [Pay within 48h|Pay now] [or it doubles|to avoid court action]: {scam_link}",
        "[DVLA|DMV]: your vehicle tax [payment failed|is overdue|has expired]. [Update your payment|Pay {fee}] [now|today] [to avoid a fine|or your car will be clamped]: {scam_link}",
        "[{utility}|Energy bill support]: you are [entitled to|owed] a [rebate|refund|discount] of {amount}. [Apply|Claim] [before {day}|now] at {scam_link}",
        "[NHS|Medicare|Council]: [you are due a refund of {amount}|your payment of {fee} failed] [for your|on your] [prescription|council tax|test kit]. [Confirm your details|Update your card] at {scam_link}",
    ],
}

HAM_TEMPLATES: dict[str, list[str]] = {
    "delivery_notice": [
        "{courier}: your parcel [will be delivered|is arriving] [today|tomorrow|on {day}] between {time} and {time2}. [Track it at|Manage your delivery at|Details:] {real_link}",
        "[Your|Good news, your] {shop} order [has been dispatched|is out for delivery|was delivered]. [It was left|We left it] [in your safe place|with a neighbour|at the front door]. [Photo|Proof of delivery]: {real_link}",
        "{courier}: [{driver} is your driver today|your driver {driver} is {n} stops away]. [Estimated arrival|ETA] {time}. [No action needed|Nothing to pay]",
        "[We're sorry we missed you|Sorry we missed you]. Your {courier} parcel is [at|waiting at] [your local post office|the {shop} collection point|a parcel locker] [from {day}|tomorrow]. [Bring ID|Your collection code is {code}]",
        "[Order {ref}|Your order {ref}] from {shop}: [dispatched|on its way]. [Expected|Arriving] {day}. [Nothing else to do|You'll get a text when it's nearby]",
    ],
    "appointment": [
        "[Reminder|Appointment reminder]: you have an appointment with {clinician} at {clinic} on {day} at {time}. [Reply C to confirm or R to rearrange|To cancel call {real_phone}|Please arrive 10 minutes early]",
        "{clinic}: [your|the] [vaccination|check-up|blood test|hygienist] appointment is [booked|confirmed] for {day} {time}. [Call {real_phone} if you can't make it|Reply CANCEL to cancel]",
        "[Hi|Hello] {name}, [this is a reminder of|just a reminder about] your [haircut|colour appointment|nails] at {salon} [tomorrow|on {day}] at {time}. [See you then!|Text back to change it]",
        "{garage}: your car's [MOT|service] is [due on {day}|booked for {day} at {time}]. [Reply or call {real_phone} to book|Please drop the keys by {time}]",
        "[Your|{name}'s] [vet|dentist|physio|optician] appointment is on {day} at {time}. [Please bring your vaccination card|Please arrive on time|No need to reply]",
    ],
    "otp_code": [
        "[Your|Use] {service} [verification|security|login] code [is|:] {code}. [Don't share it with anyone|Never share this code|Do not share this code, we will never ask for it]",
        "{code} is your {service} code. [It is valid for 10 minutes|Valid for 5 minutes]. [If you didn't ask for it, ignore this message|Keep it private]",
        "{bank}: [your one-time passcode|the code to approve your payment] of {amount} to {payee} is {code}. [We will never call to ask for it|Never share it, not even with us]",
        "{bank}: [Keep this code to yourself; we never ask for it.|Never share this code.] Approve with code {code}: [a payment of {amount} to {payee}|adding a new device|a new payee]. [If it wasn't you, call us on the number on your card|Not you? Call us]",
        "[G-|]{code} is your [Google|Microsoft|WhatsApp|Apple] verification code",
        "[{service}|Your account]: [sign-in|login] code {code}. [If this wasn't you, change your password in the app|Expires at {time}]",
    ],
    "pharmacy": [
        "{pharmacy}: [your prescription|your medicine|your repeat prescription] [can be collected|is ready for collection] [from {day}|today|now]. [Opening hours at {real_link}|Please bring your collection slip|Reply STOP to opt out]",
        "[Hello|Hi] from {pharmacy}. [Your|The] [prescription|order] for {name} has been [dispatched|sent] and will arrive [on {day}|tomorrow]. [Nothing to pay|Track it at {real_link}]",
        "{pharmacy}: [part of your prescription is out of stock|one item is on back order]; [we'll text you when it arrives|the rest is ready to collect]. [Queries: {real_phone}|Thank you]",
        "{pharmacy}: your Rx [#{ref}|{ref}] is ready [for pickup|to collect]. [Copay|Amount due] {amount_small}. [Pick up by {day}|Open until 9pm]",
        "[Your|A] flu [jab|vaccine] is available at {pharmacy}. [Book at {real_link}|Walk in {day} between {time} and {time2}]",
    ],
    "school_club": [
        "{school}: [reminder that|please note] [school closes early at {time} on {day}|{day} is a non-uniform day ({amount_small} donation)|the trip payment of {amount_small} is due by {day}]. [Pay via the school app|Thank you|Any questions, call the office]",
        "[{club}|{club} committee]: [training is cancelled tonight due to the weather|match on {day}, meet at {time}|subs of {amount_small} are due this month]. [See you {day}!|Bank details as usual|Reply if your child can't make it]",
        "[Dear parents|Hi all], [photos from the concert are on the portal|the choir concert is on {day} at {time}|please send a packed lunch on {day} for the trip]. [Many thanks|Thanks, {name}]",
        "{school}: {kid} was [marked absent|not in registration] this morning. Please [call the office on {real_phone}|reply with the reason] [as soon as possible|today]",
        "[Scouts|Brownies|Cubs|Swim club]: [{day}'s session is at the {venue}|we need 2 parent helpers on {day}|the camp deposit is {amount_small}, pay by {day}]. [Thanks!|Cheers, {name}]",
        "[{school}|The PTA]: [book fair|bake sale|school disco|summer fair] [this week|on {day}] [in the hall|after school]! [Pocket money up to {amount_small} welcome|Card payments taken too|Bring cash or a card]",
    ],
    "family_friends": [
        "[Hi|Hey] {relation}, [can you lend me|could I borrow] {amount} [till Friday|until payday|for the gas bill]? [I'll pay you back on {day}|Sorry to ask again x|Same account as last time]",
        "[Thanks|Thank you] [for the money|for sending the {amount}|for lunch] {name}, [I'll pay you back {day}|got it, you're a star|means a lot] x",
        "[Are you|R u] [coming to|still up for] [dinner|the pub|the match|Sarah's party] [on {day}|tonight|later]? [I'll book a table for {time}|Let me know by {time}|Bring a bottle]",
        "[Running late|Stuck in traffic|Train delayed], [be there by|see you at] {time} [sorry!|x|]",
        "[Can you|Could you] [pick up milk|grab some bread|get the kids] on your way home? [Thanks love|Ta x|Cheers]",
        "[Happy birthday|Happy anniversary|Congrats on the new job] {name}! [Hope you have a lovely day|Drinks on me {day}|Love you lots] x",
        "[Mum|Dad|{name}], [I sent you|I've transferred] {amount} for [the tickets|my share of the holiday|the shopping]. [Let me know when it's in|Check your account]",
        "[Did you|Have you] [see|seen] [the match|the news|what {name} posted]? [Call me later|Mad!|Unbelievable]",
        "[Landed|Home safe|Just arrived], [speak tomorrow|night night|call you in the morning] x",
    ],
    "bank_notice": [
        "{bank}: [you spent|a payment of] {amount} at {shop} [today|on {day}]. [Your balance is {amount2}|No action needed|If you don't recognise this, use the app to freeze your card]",
        "{bank}: your [salary|payment] of {amount} from {payer} has [arrived|been paid in]. [Available balance {amount2}|Nice!]",
        "{bank}: your [statement|monthly statement] is ready to view in [the app|online banking]. We'll never ask you to [share your PIN|move money|click a link to log in] by text",
        "{bank}: a [direct debit|standing order] of {amount} to {payee} [will be taken on {day}|was paid today]. [Your balance is {amount2}|Make sure there's enough in your account]",
        "{bank}: [you're|you are] {amount_small} [below|under] your [balance alert|low balance alert] of {amount}. [Top up in the app to avoid fees|No action needed]",
        "[Your|The] {bank} card ending {last4} [has been sent|will arrive in 3-5 working days|is now active]. [Activate it in the app|You can keep using your old card until then]",
        "{bank}: your [new|replacement] [debit|credit] card is in the post; expect it in [3|5|7] working days. [Your old card works until then|Activate it in the app when it comes]",
        "{bank}: thanks, we've [received|credited] your payment of {amount}. [Credit available now: {amount2}|No action needed]",
    ],
    "ride_food": [
        "[Your|The] {ride} [driver|car] [is arriving|has arrived|is 3 minutes away]: {driver} in a [grey|white|black|blue] {car}, {plate}",
        "{food}: your order from [{restaurant}|the restaurant] [is being prepared|is on its way|has been delivered]. [Enjoy!|Estimated arrival {time}|Rate your order in the app]",
        "{train}: the {time} to {city} [is delayed by {n} minutes|is cancelled|departs from platform {n}]. [Sorry for the delay|Check the app for alternatives|Your ticket is valid on the next service]",
        "[Your|A] {ride} [receipt|trip] for {amount_small} [is in the app|has been emailed to you]. Thanks for riding with {ride}",
        "[Table for {n} booked|Your booking is confirmed] at {restaurant} on {day} at {time}. [Reply CANCEL to cancel|See you then!]",
        "{ride}: [your|the] [car|cab|taxi] [from {city}|to {city}] is booked for {time} [tomorrow|on {day}]. [Estimated fare|Fare] {amount_small}. [Driver details will follow|We'll text you when the driver is on the way]",
        "[Your|The] {train} [ticket|e-ticket] for the {time} to {city} is [in the app|ready in your account]. [Coach|Carriage] [A|B|C|D], seat {n}{n}. [Have a good trip|Show it to the guard on board]",
        "[Your|A] {food} [driver|rider] [has picked up your order|is nearby|is at the door]. [Order|Ref] {ref}. [Enjoy your meal|Nothing to pay]",
    ],
    "service_notice": [
        "{utility}: [we'll read your meter on {day}|your bill of {amount} is ready in your account|your direct debit changes to {amount} from {day}]. [No action needed|Log in to the app for details]",
        "[{council}|The council]: [bin collection moves to {day} this week|your {day} garden waste collection is cancelled|roadworks on your street from {day}]. [More at {real_link}|Sorry for any inconvenience]",
        "{carrier}: [you've used 80% of your data|your bill of {amount} is ready|your new plan starts on {day}]. [Manage it in the app|No action needed]",
        "[{service}|Your library]: [your subscription renews on {day}|the book you reserved is ready|your password was changed]. [If this wasn't you, reset it in the app|Nothing to do]",
        "[{name} from {agency}|{agency}] here, [thanks for your interview today|your timesheet is approved|your shift on {day} starts at {time}]. [Any questions, call {real_phone}|See you then]",
    ],
}

FIRST_NAMES = ["Sam", "Priya", "Tom", "Aisha", "Jake", "Chloe", "Mohammed", "Emma", "Liam", "Zoe", "Wei", "Olu", "Grace",
               "Dan", "Fatima", "Ryan", "Sophie", "Carlos", "Hannah", "Noah", "Ellie", "Kofi", "Megan", "Raj", "Lucy"]
SLOTS: dict[str, list[str]] = {
    "courier": ["Royal Mail", "Evri", "DPD", "DHL", "UPS", "FedEx", "USPS", "Parcelforce", "Yodel", "Amazon", "InPost", "Hermes"],
    "bank": ["Barclays", "HSBC", "Lloyds", "NatWest", "Santander", "Monzo", "Chase", "Wells Fargo", "Revolut", "Halifax",
             "Nationwide", "Starling", "Bank of America", "TSB"],
    "carrier": ["EE", "Vodafone", "O2", "Three", "giffgaff", "Verizon", "AT&T", "T-Mobile", "Tesco Mobile"],
    "service": ["Netflix", "Amazon", "Apple", "PayPal", "Spotify", "Disney+", "eBay", "Vinted", "Steam", "Uber"],
    "shop": ["Tesco", "Asda", "Boots", "Amazon", "Argos", "Walmart", "Target", "Costco", "Sainsbury's", "Currys", "IKEA",
             "John Lewis", "Lidl", "M&S"],
    "pharmacy": ["Boots", "Lloyds Pharmacy", "Well Pharmacy", "CVS", "Walgreens", "Superdrug", "the pharmacy", "Rowlands"],
    "clinic": ["Oak Lane Surgery", "Riverside Dental", "Parkview Medical Centre", "the health centre", "Smile Dental Care",
               "High Street Practice", "City Eye Clinic"],
    "clinician": ["Dr Patel", "Dr Jones", "the nurse", "the hygienist", "Dr Okafor", "Dr Smith"],
    "salon": ["Cut Above", "Studio 9", "Hair by Jo", "The Barber Shop", "Nail Bar"],
    "garage": ["Kwik Fit", "Halfords Autocentre", "Smith's Garage", "Station Road Motors"],
    "school": ["Oakfield Primary", "St Mary's", "Hillside Academy", "Greenway School", "Lincoln Elementary"],
    "club": ["U10s football", "Juniors rugby", "Swim club", "Choir", "Tennis club", "Cricket club"],
    "venue": ["church hall", "leisure centre", "school field", "community centre"],
    "ride": ["Uber", "Bolt", "Lyft", "FREENOW", "Addison Lee"],
    "food": ["Deliveroo", "Just Eat", "Uber Eats", "DoorDash", "Grubhub"],
    "restaurant": ["Pizza Express", "Wagamama", "Nando's", "the Thai place", "Dishoom", "Golden Dragon"],
    "train": ["Trainline", "LNER", "Avanti", "GWR", "Amtrak", "Northern", "Southern"],
    "city": ["London Euston", "Manchester", "Leeds", "Brighton", "Bristol", "Boston", "Glasgow"],
    "car": ["Toyota Prius", "Skoda Octavia", "Kia Niro", "Tesla Model 3", "Ford Focus"],
    "utility": ["British Gas", "Octopus Energy", "EDF", "Thames Water", "OVO", "ConEd"],
    "council": ["Leeds City Council", "Camden Council", "the council", "Bristol City Council"],
    "toll": ["Dart Charge", "E-ZPass", "FasTrak", "SunPass", "ULEZ"],
    "agency": ["Hays", "Reed", "Indeed", "Talent Hub", "Brightstar Recruitment", "Global HR"],
    "chat_app": ["WhatsApp", "Telegram", "Signal"],
    "crypto": ["Bitcoin", "BTC", "USDT", "Ethereum", "crypto"],
    "prize": ["£500 Tesco voucher", "iPhone 16", "$1000 Walmart gift card", "PS5", "free holiday", "Dyson Airwrap",
              "£250 Amazon gift card", "Samsung Galaxy"],
    "gadget": ["iPhone 16", "AirPods", "Galaxy S25", "Dyson V15", "Ninja air fryer", "PS5"],
    "relation": ["mum", "Mum", "dad", "Dad", "mom", "nan", "grandma", "auntie"],
    "kid": ["Jess", "Tom", "Amy", "Ben", "Katie", "your son", "your daughter", "Lily", "Josh"],
    "name": FIRST_NAMES,
    "driver": FIRST_NAMES,
    "payer": ["ACME LTD", "NHS PAYROLL", "HMRC", "Smith & Co", "your employer"],
    "payee": ["J SMITH", "Amazon", "British Gas", "Vodafone", "a new payee", "PayPal"],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "12 March",
            "3rd June", "Oct 14", "the 21st"],
    "penalty": ["£35", "$50", "£70", "$25"],
}
