from django.shortcuts import render


def groupchat(request):
    groupid = request.GET.get("groupID")  # 获取群组ID
    return render(request, "groupchatting.html", {"group_num": groupid})
