from channels.exceptions import StopConsumer
from channels.generic.websocket import WebsocketConsumer


class ChatConsumer(WebsocketConsumer):
    def websocket_connect(self, message):
        """客户端向服务端发送websocket连接的请求时自动触发。"""
        print("1 > 客户端和服务端开始建立连接")
        self.accept()

    def websocket_receive(self, message):
        """客户端基于websocket向服务端发送数据时,自动触发接收消息。"""
        print(f"2 > 服务端接收客户端的消息, message is {message}")
        recv_data = message["text"]
        if recv_data == "exit":  # 服务端主动关闭websocket连接时,前端会执行对应的 onclose
            self.close()
            # raise StopConsumer()  # raise主动抛异常后,websocket_disconnect 就不在执行了,多用于`只处理服务端向客户端断开`的场景
            return
        send_data = f"服务端主动推送消息:{recv_data}"
        self.send(text_data=send_data)

    def websocket_disconnect(self, message):
        """客户端与服务端断开websocket连接时自动触发(不管是客户端向服务端断开还是服务端向客户端断开都会执行)"""
        print("3 > 客户端和服务端断开连接")
        self.close()
        raise StopConsumer()
