"""The seed's two chats as a Django shop would write them for production: the same texts on the
same routes, but AsyncWebsocketConsumers (no thread hop per message through async_to_sync, no
print per message). The group chat sends the same event as the tutorial's consumer (`send_msg`
carrying the `websocket.receive` message), so it shares groups with the tutorial's consumers and
with the Rust replicas."""

from channels.generic.websocket import AsyncWebsocketConsumer


class ChatConsumer(AsyncWebsocketConsumer):
    """The single chat (app01): every text comes back as 服务端主动推送消息:X; "exit" closes."""

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            return
        if text_data == "exit":
            await self.close()
            return
        await self.send(text_data=f"服务端主动推送消息:{text_data}")


class GroupChatConsumer(AsyncWebsocketConsumer):
    group_id = None

    async def connect(self):
        self.group_id = self.scope["url_route"]["kwargs"]["groupID"]
        await self.channel_layer.group_add(self.group_id, self.channel_name)
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None:
            # The tutorial's consumer answers text only; binary frames are dropped the same way.
            return
        await self.channel_layer.group_send(
            self.group_id,
            {"type": "send_msg", "message": {"type": "websocket.receive", "text": text_data}},
        )

    async def send_msg(self, event):
        await self.send(text_data=f"组内主动推送消息:{event['message'].get('text')}")

    async def disconnect(self, code):
        if self.group_id is not None:
            await self.channel_layer.group_discard(self.group_id, self.channel_name)
