-- An EDU that must reach its destination (to-device, device-list and
-- signing-key updates) and rode in a transaction the destination refused
-- with a permanent 4xx is kept and marked resend = 1: it goes again in a
-- transaction of its own, without the refused PDUs. If that EDU-only
-- transaction is refused too, the EDUs themselves are what the
-- destination will not take, and they are dropped.
ALTER TABLE federation_queue_edus ADD COLUMN resend INTEGER NOT NULL DEFAULT 0;
