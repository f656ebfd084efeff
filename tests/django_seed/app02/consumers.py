from asgiref.sync import async_to_sync
from channels.exceptions import StopConsumer
from channels.generic.websocket import WebsocketConsumer


class GroupChatConsumer(WebsocketConsumer):
    group_id = None

    def websocket_connect(self, message):
        # 接受客户端连接
        self.accept()
        print(">>> 客户端和服务端已成功建立连接 <<<")
        # 从url获取群组id,这个groupID必须和routings里的路由分组名保持一致
        self.group_id = self.scope["url_route"]["kwargs"].get("groupID")
        # 将当前的连接加入到名为self.group_id的组中
        async_to_sync(self.channel_layer.group_add)(self.group_id, self.channel_name)

    def websocket_receive(self, message):
        print(f"current self is {self}, id is {id(self)}, groupID is {self.group_id}")
        # 组内所有的客户端,执行type对应的函数,可以在此函数中自定义任意功能
        async_to_sync(self.channel_layer.group_send)(self.group_id, {"type": "send_msg", "message": message})

    def send_msg(self, event):
        input_msg = event["message"].get("text")
        send_msg = f"组内主动推送消息:{input_msg}"
        self.send(text_data=send_msg)

    def websocket_disconnect(self, message):
        # self.channel_name从组self.group_id中删除并断开连接
        async_to_sync(self.channel_layer.group_discard)(self.group_id, self.channel_name)
        print(">>> 客户端和服务端已断开连接 <<<")
        raise StopConsumer()
